"""Typed, frozen stage configs; they combine into one root `RecommenderConfig`.

Every config is a pydantic model with `frozen=True, extra="forbid"`: a mistyped key is an error that names
the key, and a bad value is an error that names the field, the value and what is allowed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StageConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Self:
        return cls.model_validate_json(Path(path).read_text())


class DataConfig(StageConfig):
    """How raw ratings become behaviours, and how the evaluation split is cut."""

    dataset: str = "ml-100k"
    like_threshold: float = 4.0  # rating >= this -> "liked"
    dislike_threshold: float = 2.0  # rating <= this -> "disliked"; in between -> "watched"
    min_events_for_split: int = Field(default=3, ge=3)

    @model_validator(mode="after")
    def _thresholds(self) -> Self:
        if self.dislike_threshold >= self.like_threshold:
            raise ValueError(
                f"dislike_threshold ({self.dislike_threshold}) must be below like_threshold ({self.like_threshold})"
            )
        return self


class VocabConfig(StageConfig):
    """How a dataset's attribute vocabulary is built (llmrec.vocab.build_vocabulary)."""

    movie_lexicon: bool | None = None  # MovieLens genres + synonym table; None: when the domain is movies
    keywords: bool | None = None  # TF-IDF keywords of title + text; None: off for movies (ML-100K tags unchanged)
    keywords_per_item: int = Field(default=3, ge=1, le=20)  # an item's top keywords by tf * idf
    min_df: int = Field(default=2, ge=1)  # a keyword is in at least this many items
    max_df: float = Field(default=0.3, gt=0.0, le=1.0)  # ... and in at most this share of items
    max_keywords: int = Field(default=5000, ge=1)  # keyword vocabulary size (most frequent kept)
    brands: bool = True  # brand/publisher as an attribute "brand:<name>"
    decades: bool = True  # release decade as an attribute when items have a year
    max_category_share: float = Field(default=0.9, gt=0.0, le=1.0)  # categories on more items are roots: dropped
    min_category_items: int = Field(default=1, ge=1)  # categories on fewer items are dropped


class NarrativeConfig(StageConfig):
    """RecGPT-style history compression (see `llmrec.narrative`)."""

    # Behaviours kept as intentional, with their weight in the informativeness score; others are dropped.
    behavior_weights: dict[str, float] = Field(
        default_factory=lambda: {"liked": 3.0, "disliked": 2.0, "watched": 1.0, "purchased": 3.0, "clicked": 0.5}
    )
    recent_days: int = Field(default=30, ge=1)  # day-by-day buckets within this window
    monthly_days: int = Field(default=365, ge=1)  # month-by-month within this window, year-by-year beyond
    max_tokens: int = Field(default=1024, ge=32)
    max_pairs_per_item: int = Field(default=4, ge=1)  # (time, behaviour) pairs kept per item entry
    max_genres: int = Field(default=3, ge=0)  # attributes rendered per item
    # Informativeness of an event = behaviour weight * 0.5 ** (age in days / half-life); the budget drops the
    # lowest-scored item entries first.
    recency_half_life_days: float = Field(default=180.0, gt=0)
    # "auto": sum cached part counts when the tokenizer makes that exact (byte-level BPE), else re-tokenize
    # each narrative whole; "exact": always re-tokenize whole (slow; the reference the fast path is tested on).
    count_mode: Literal["auto", "exact"] = "auto"

    @model_validator(mode="after")
    def _weights(self) -> Self:
        if not self.behavior_weights:
            raise ValueError("behavior_weights must keep at least one behaviour type")
        bad = {k: v for k, v in self.behavior_weights.items() if v <= 0}
        if bad:
            raise ValueError(f"behavior_weights must be positive, got {bad}")
        # Names go into the text between separators: letters/digits at both ends keep token counts additive.
        odd = [k for k in self.behavior_weights if not re.fullmatch(r"[^\W_](?:[\w -]*[^\W_])?", k)]
        if odd:
            raise ValueError(f"behavior_weights keys {odd} must be words (letters, digits, space, '-', '_') "
                             f"that start and end with a letter or digit")
        if self.monthly_days <= self.recent_days:
            raise ValueError(f"monthly_days ({self.monthly_days}) must exceed recent_days ({self.recent_days})")
        return self


# --- Batch jobs, explanations, cold start (llmrec.jobs, explain, llmrec.coldstart) ------------------



class JobConfig(StageConfig):
    """How a batch job shards its keys and where it runs (see `llmrec.jobs.run_sharded`)."""

    # Keys (users) per shard: the unit of atomic write and resume, and the widest LLM batch of a shard. 1024 holds
    # all 943 ML-100K users: one continuous vLLM batch (LLMConfig.max_num_seqs decoded at a time, refilled as
    # answers finish), so the decode tail and the retry pass come once per job rather than once per 256 users.
    shard_size: int = Field(default=1024, ge=1)
    executor: Literal["local", "ray"] = "local"
    key_column: str = Field(default="user_id", min_length=1)  # column of the output rows naming their key
    ray_num_cpus: int = Field(default=2, ge=1)  # ray.init(num_cpus=...) when the job starts Ray itself
    ray_concurrency: int = Field(default=1, ge=1)  # actors, each holding one engine
    progress: bool = True  # tqdm bar with users/min


class ExplainConfig(StageConfig):
    """RecGPT-style explanations per (interest, item) pair (see `explain.explain`)."""

    batch_size: int = Field(default=16, ge=1)  # prompts per backend.generate call
    max_tokens: int = Field(default=64, ge=8)  # decoding budget per explanation
    max_chars: int = Field(default=160, ge=20)  # maxLength of the explanation string in the JSON schema
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    retry_temperature: float = Field(default=0.7, ge=0.0, le=2.0)  # regeneration must not repeat greedy output
    retries: int = Field(default=1, ge=0, le=3)  # regenerations of unfaithful/invalid ones before the template
    max_genres: int = Field(default=3, ge=1)  # genres named in prompt and template
    max_evidence: int = Field(default=2, ge=0, le=3)  # user's history items cited per explanation (explain.facts)


class ColdStartConfig(StageConfig):
    """Imagined histories for cold users (see `llmrec.coldstart`), after the RecSys 2025 ICL paper."""

    max_events: int = Field(default=5, ge=0)  # users with at most this many events are cold
    n_imagined: int = Field(default=5, ge=1, le=20)  # k imagined items per user
    n_examples: int = Field(default=3, ge=0, le=10)  # c in-context examples from similar users
    example_items: int = Field(default=5, ge=1, le=20)  # first items rendered per example user
    sim_threshold: float = Field(default=0.5, ge=-1.0, le=1.0)  # cosine to accept a catalogue match
    max_tokens: int = Field(default=200, ge=16)
    # prompts per backend call; None = all in one call. ML-100K, the 100 sampled cold_user_1 users, greedy:
    # one call 120.6 s vs 179.0 s at 8 per call, the same imagined items for all 100 (2 cores, alone).
    batch_size: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    retries: int = Field(default=1, ge=0, le=3)  # re-asks after invalid JSON before the flagged fallback
    retry_temperature: float = Field(default=0.7, ge=0.0, le=2.0)  # re-asks sample: a greedy one repeats the answer
    # Behaviour of imagined events; None: the dataset's main positive type (`behaviors.main_positive`: "liked"
    # for ratings, "purchase" for a shop log), which the prompt's verbs also follow.
    imagined_behavior: str | None = Field(default=None, min_length=1)
    spacing_hours: float = Field(default=24.0, gt=0.0)  # time between imagined events, ending before the first real one
    fusion: Literal["early", "late"] = "early"


class IndexConfig(StageConfig):
    """FAISS index over item vectors (inner product): exact by default, IVF or HNSW for large catalogues."""

    kind: Literal["flat", "ivf", "hnsw"] = "flat"
    nlist: int = Field(default=1024, ge=1)  # IVF: number of k-means cells
    nprobe: int = Field(default=16, ge=1)  # IVF: cells visited per query (recall vs speed)
    train_size: int = Field(default=100_000, ge=1)  # IVF: vectors sampled to train the k-means quantiser
    hnsw_m: int = Field(default=32, ge=2)  # HNSW: links per node
    ef_construction: int = Field(default=40, ge=1)  # HNSW: beam width while building
    ef_search: int = Field(default=64, ge=1)  # HNSW: beam width while searching (must cover k)
    seed: int = 0  # IVF training sample and k-means initialisation

    @model_validator(mode="after")
    def _probe(self) -> Self:
        if self.nprobe > self.nlist:
            raise ValueError(f"nprobe ({self.nprobe}) must not exceed nlist ({self.nlist})")
        return self


class SASRecConfig(StageConfig):
    """SASRec (Kang & McAuley 2018); loss "bce" = the paper's one sampled negative, "ce" = full softmax (SASRec+)."""

    loss: Literal["bce", "ce"] = "ce"
    # Defaults chosen on ML-100K validation NDCG@10 (see retrieval/sasrec.py): maxlen 50 covers the median
    # training history (~60 events) at a quarter of maxlen 200's attention cost.
    maxlen: int = Field(default=50, ge=2)  # most recent items fed to the model
    hidden: int = Field(default=64, ge=8)  # embedding / model width
    blocks: int = Field(default=2, ge=1)  # self-attention blocks
    heads: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    lr: float = Field(default=1e-3, gt=0.0)
    epochs: int = Field(default=200, ge=1)  # upper bound; early stopping usually ends sooner
    batch_size: int = Field(default=128, ge=1)
    patience: int = Field(default=3, ge=1)  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = Field(default=4, ge=1)  # epochs between validation evaluations
    seed: int = 0
    threads: int = Field(default=2, ge=1)  # torch CPU threads
    # Add a linear projection of the item content features (frozen text vectors, genres, year) to the item id
    # embedding: the towers' content without their architecture, so content and LLM effects separate.
    content_features: bool = False

    @model_validator(mode="after")
    def _heads(self) -> Self:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class FinetuneConfig(StageConfig):
    """LoRA SFT on targets derived from the events themselves (see `finetune.build_sft`, `finetune.train_lora`)."""

    # SFT data (finetune.build_sft)
    cut_fractions: tuple[float, ...] = (0.75,)  # cut each train history at these shares of its events
    min_events_before_cut: int = Field(default=10, ge=2)  # users with fewer events before t give no example
    narrative_max_tokens: int | None = Field(default=None, ge=32)  # input narrative budget; None: the mining
    # prompt's (MiningConfig.narrative_tokens), so the model is tuned on what inference shows it
    n_interests: int = Field(default=5, ge=1, le=20)  # interests in the target (genre combinations before t)
    # evidence line numbers per target interest; None: MiningConfig.max_evidence (0: the answer cites none)
    n_evidence: int | None = Field(default=None, ge=0, le=10)
    n_tags: int = Field(default=10, ge=1, le=50)  # tags in the target (items taken after t), best first
    tag_horizon: int = Field(default=20, ge=1)  # events after t whose items give the tag target
    # Users whose events never enter SFT data: by default exactly the evaluation's true cold-start users
    # (EvaluateConfig.cold_user_share / cold_user_seed pick the same users), so a tuned LLM never saw them.
    holdout_share: float = Field(default=0.15, ge=0.0, lt=1.0)
    holdout_seed: int = 0
    # LoRA (peft.LoraConfig)
    r: int = Field(default=8, ge=1, le=256)
    alpha: float = Field(default=16.0, gt=0.0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # Training (finetune.train_lora)
    learning_rate: float = Field(default=3e-4, gt=0.0)
    warmup_steps: int = Field(default=4, ge=0)
    epochs: int = Field(default=1, ge=1)
    max_train_tokens: int = Field(default=150_000, ge=1)  # stop after this many tokens (~120 tok/s on 2 cores)
    max_train_minutes: float | None = Field(default=None, gt=0.0)  # wall-clock guard for shared machines: stop
    # early, still save the adapter, and record `stopped_by` in the manifest (None = token budget only)
    batch_size: int = Field(default=4, ge=1)  # examples per optimizer step (accumulated one by one, no padding)
    max_seq_len: int = Field(default=1280, ge=16)  # longer examples are skipped and counted (ML-100K: max ~1110)
    valid_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)  # share of USERS held out for validation loss
    max_valid_examples: int = Field(default=16, ge=1)  # validation examples scored per evaluation
    eval_every_steps: int = Field(default=20, ge=1)
    seed: int = 0
    num_threads: int = Field(default=2, ge=1)  # torch CPU threads

    @model_validator(mode="after")
    def _finetune(self) -> Self:
        bad = [f for f in self.cut_fractions if not 0.0 < f < 1.0]
        if not self.cut_fractions or bad:
            raise ValueError(f"cut_fractions must be a non-empty list of values in (0, 1), got {self.cut_fractions}")
        allowed = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        unknown = sorted(set(self.target_modules) - allowed)
        if not self.target_modules or unknown:
            raise ValueError(f"target_modules must be a non-empty subset of {sorted(allowed)}, got "
                             f"{list(self.target_modules)}")
        if self.narrative_max_tokens is not None and self.narrative_max_tokens >= self.max_seq_len:
            raise ValueError(f"narrative_max_tokens ({self.narrative_max_tokens}) must be below max_seq_len "
                             f"({self.max_seq_len}) to leave room for the instructions and the answer")
        return self


class SelfTrainConfig(StageConfig):
    """RecGPT's self-training evolution of the tag task (`finetune.self_train`): per round, sample answers
    from the current adapter, reward each by tag-to-item retrieval of the user's later TRAIN events, keep the
    best where it beats the history-frequency tags, retrain the LoRA."""

    rounds: int = Field(default=2, ge=1)  # round r samples from round r-1's adapter (round 0: the SFT adapter)
    samples: int = Field(default=4, ge=1, le=64)  # answers sampled per cut per round
    temperature: float = Field(default=1.0, gt=0.0, le=2.0)  # > 0: identical prompts must give different answers
    # Sample only the cuts of the first N train users by id (None: all); every round still retrains on the SFT
    # examples of all train users, so that a round differs from round 0 by its kept answers alone.
    max_users: int | None = Field(default=None, ge=1)
    # The cuts, SFT targets and LoRA training of every round (by default the round-0 adapter's own config)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)


# --- Interest mining, tag prediction and 360Brew ranking (llmrec.interests, llmrec.rerank) ----------


class MiningConfig(StageConfig):
    """Interest mining with tag prediction (see `llmrec.interests`): one batched, JSON-constrained call per user.

    Output tokens are the cost on CPU (decoding runs at ~2/3 of prefill speed per token even at batch 256),
    so the defaults are compact: 5 interests x 2 tags in <= 192 tokens, no cited line numbers (~26% fewer output
    tokens than citing 2 per interest); each interest's evidence is attributed from the history instead. The
    whole job is one continuous batch (JobConfig.shard_size holds all of ML-100K's users, sent in one call).
    """

    min_interests: int = Field(default=5, ge=1, le=20)  # minItems of the interest list (RecGPT asks >= 5)
    max_interests: int = Field(default=5, ge=1, le=20)  # maxItems of the interest list
    # History line numbers the answer cites per interest; 0: the answer has no evidence array (format 5) and
    # up to `attributed_evidence` narrative items carrying the interest's attributes become its evidence.
    max_evidence: int = Field(default=0, ge=0, le=10)
    attributed_evidence: int = Field(default=2, ge=0, le=10)
    tags_per_interest: int = Field(default=2, ge=1, le=10)  # "modifier + core" tags per interest
    max_name_chars: int = Field(default=40, ge=8)  # maxLength of an interest name
    max_tag_chars: int = Field(default=32, ge=8)  # maxLength of a tag
    max_tokens: int = Field(default=192, ge=16)  # decoding budget of one answer
    narrative_tokens: int = Field(default=128, ge=32)  # narrative budget of the mining prompt (prefill is the
    # other cost: ~650 prompt tokens/s on 2 cores, so 64 tokens fewer save ~95 s over 943 users); the SFT inputs
    # use the same budget
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    retry_temperature: float = Field(default=0.7, ge=0.0, le=2.0)  # the one retry must not repeat greedy output
    # Greedy SmolLM2 repeats its first interest ("1990s drama" x5, rejected as < min_interests distinct):
    # measured on 64 users with the LoRA model, valid first try 2/64 at 0.0, 49/64 at 0.5, 63/64 at 1.0.
    frequency_penalty: float = Field(default=1.0, ge=0.0, le=2.0)
    # Prompts per backend.generate call; None: the whole shard (JobConfig.shard_size) in one call, which vLLM
    # decodes max_num_seqs at a time (wide batches decode faster)
    batch_size: int | None = Field(default=None, ge=1)
    # False: names' and tags' maximum lengths are validated after decoding, not in the decoding grammar (cheaper
    # token masks; an over-long string is a counted failure, retried); llmrec.llm.structured.without_max_lengths
    decode_max_lengths: bool = False

    @property
    def evidence_per_interest(self) -> int:
        """Evidence items an interest carries at most: the cited lines, or the attributed items without them."""
        return self.max_evidence or self.attributed_evidence

    @property
    def max_tags(self) -> int:
        """Tags per user at most (RecGPT allows up to 50)."""
        return self.max_interests * self.tags_per_interest

    @model_validator(mode="after")
    def _mining(self) -> Self:
        if self.min_interests > self.max_interests:
            raise ValueError(f"min_interests ({self.min_interests}) must not exceed max_interests "
                             f"({self.max_interests})")
        return self


class RerankConfig(StageConfig):
    """360Brew-style Yes/No ranking of retrieved candidates (see `llmrec.rerank`)."""

    batch_size: int = Field(default=64, ge=1)  # (user, candidate) prompts per backend.score_choices call
    max_narrative_chars: int = Field(default=2000, ge=100)  # narrative text kept in each ranking prompt
    max_interests: int = Field(default=8, ge=0)  # interests of the profile named in the prompt


class ListwiseConfig(StageConfig):
    """LlamaRec-style listwise LLM ranker over a retriever's top candidates (see `llmrec.listwise`)."""

    candidates: int = Field(default=20, ge=2, le=20)  # lettered A..T: one token each in SmolLM2's vocabulary
    max_narrative_chars: int = Field(default=1200, ge=100)  # narrative lines kept in each prompt (prefill cost)
    batch_size: int = Field(default=32, ge=1)  # prompts per backend.score_choices call
    lambdas: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)  # fusion weights tried on validation
    seed: int = 0  # candidate shuffling of the SFT examples

    @model_validator(mode="after")
    def _listwise(self) -> Self:
        if not self.lambdas or any(lam < 0 for lam in self.lambdas) or 0.0 not in self.lambdas:
            raise ValueError(f"lambdas must be non-negative and include 0.0 (the retriever alone), got "
                             f"{list(self.lambdas)}")
        return self


class TowerConfig(StageConfig):
    """User/item/tag three-tower retriever (see `retrieval.towers`, `retrieval.losses`, `retrieval.train`)."""

    encoder: Literal["minilm", "hashed-bow"] = "minilm"  # frozen text features of items and tags
    encoder_batch_size: int = Field(default=128, ge=1)
    cache_dir: str | None = None  # text-feature cache; None -> $LLMREC_HOME/cache/text-features
    dim: int = Field(default=64, ge=4)  # width of every tower's output
    hidden: int = Field(default=256, ge=4)  # MLP width of the item and tag towers
    year_bucket: int = Field(default=5, ge=1)  # release years per year-bucket embedding
    id_embedding: bool = True  # item tower adds a learned ID embedding (zero-initialised) to content features
    profile_features: bool = True  # user tower adds hashed profile features (age bucket, gender, occupation)
    text_features: bool = True  # item tower reads the frozen text vectors (False: an attribution row without text)
    profile_buckets: int = Field(default=256, ge=1)  # hashlib buckets shared by all profile features
    max_len: int = Field(default=100, ge=2)  # most recent items fed to the user tower (with a start token);
    # ML-100K seed 0: 100 -> valid/test NDCG@10 0.105/0.088, 50 -> 0.090/0.074 (about half the training time;
    # measured before the position_init_std fix below)
    layers: int = Field(default=2, ge=1)  # causal self-attention blocks of the user tower
    # User-tower position embeddings start at N(0, std^2). They were N(0, 1) (torch's default: norm ~8 at dim
    # 64) against item inputs of norm ~0.35, so positions drowned the items and the tower fell back to
    # popularity where histories are short: Amazon Magazine valid NDCG@10 0.117 at N(0, 1), 0.196 at std 0.02
    # (3 seeds; SASRec+ 0.209). SASRec+ keeps items on top as well (Xavier positions, items scaled by sqrt(d)).
    position_init_std: float = Field(default=0.02, gt=0.0)
    heads: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    logq: bool = True  # subtract log q(item) from sampled-softmax logits (sampled softmax only)
    mixed_negatives: bool = True  # in-batch negatives plus `uniform_negatives` uniform draws (else in-batch only;
    # sampled softmax only)
    uniform_negatives: int = Field(default=256, ge=1)
    learnable_temperature: bool = True  # else `temperature` stays fixed
    temperature: float = 0.1  # initial (or fixed) cosine temperature, within [0.01, 100]
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)  # L = L_col + alpha L_tag + (1 - alpha) L_cate
    tag_batch_size: int = Field(default=256, ge=1)  # (tag, item) pairs per step for L_tag and L_cate
    batch_size: int = Field(default=64, ge=1)  # users per step (every position of each is a next-item example)
    # ML-100K: 3e-3 reached valid NDCG@10 0.090 vs 0.067 at 1e-3 (before the position fix); per dataset,
    # `llmrec evaluate --tune-towers` searches lr x dropout on validation (Amazon Magazine chose 3e-3, 0.5)
    lr: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    # Budget and early stopping (retrieval.stopping). SASRec+'s budget: 200 epochs, validation every 4. On a
    # held-out ~10k-item MovieLens set, patience 8 epochs stopped the tower at best epoch 2 of 10 (NDCG@10
    # 0.015 vs SASRec+ 0.053, which trained to epoch 116); patience 40 over 120 epochs reached 0.034 (best
    # epoch 108). So: no stop before min_epochs, and patience counts evaluations of a smoothed metric.
    epochs: int = Field(default=200, ge=1)  # upper bound; early stopping on validation NDCG@10 ends sooner
    eval_every: int = Field(default=4, ge=1)  # epochs between validation evaluations (and always the last)
    patience: int = Field(default=5, ge=1)  # evaluations without a gain of the smoothed metric before stopping
    min_epochs: int = Field(default=40, ge=1)  # never stop before this epoch (capped at `epochs`)
    smooth_evals: int = Field(default=3, ge=1)  # stopping watches the mean of the last k validation NDCG@10
    softmax: Literal["auto", "full", "sampled"] = "auto"  # auto: full when n_items <= full_softmax_max_items
    full_softmax_max_items: int = Field(default=50_000, ge=1)  # full softmax holds [positions, N] logits a step:
    # batch 64 x max_len 100 x 50k items ~ 1.3 GB float32 (plus its gradient); SASRec+ pays the same
    init_item_embeddings: Literal["none", "sasrec"] = "none"  # sasrec: ID embeddings start from SASRec+'s items
    beta_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    tag_pooling: Literal["mean", "max"] = "mean"  # s_tag = mean (or max) over the user's tags of tag . item
    user_tags: int = Field(default=10, ge=1)  # heuristic tags per user (history_tags k) when no tags table
    seed: int = 0
    threads: int = Field(default=2, ge=1)  # torch CPU threads while training
    index: IndexConfig = Field(default_factory=IndexConfig)  # FAISS index over the item vectors

    @model_validator(mode="after")
    def _towers(self) -> Self:
        if not 0.01 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be within [0.01, 100], got {self.temperature}")
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        if not self.beta_grid or any(not 0.0 <= b <= 1.0 for b in self.beta_grid):
            raise ValueError(f"beta_grid must be a non-empty list of values in [0, 1], got {list(self.beta_grid)}")
        if self.init_item_embeddings != "none" and not self.id_embedding:
            raise ValueError(f"init_item_embeddings={self.init_item_embeddings!r} needs id_embedding=True")
        return self


# The tower settings `retrieval.tune.tune_towers` searches on validation by default (`llmrec evaluate --tune-towers`).
DEFAULT_TOWER_GRID: dict[str, tuple] = {"lr": (1e-3, 3e-3), "dropout": (0.2, 0.5)}


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for max_lora_rank


class LLMConfig(StageConfig):
    """Which LLM serves the stages and how (see `llmrec.llm.make_backend`).

    CPU defaults are the measured ones (fp32, eager, KV cache sized in bytes); on a CUDA machine `dtype="auto"`
    lets vLLM pick bf16/fp16 and `gpu_memory_utilization` sizes the KV cache.
    """

    model: str | None = None  # local HF model folder; None = packaged SmolLM2-135M-Instruct
    backend: Literal["vllm", "transformers", "server"] = "vllm"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on CPU, model dtype on CUDA
    max_model_len: int = Field(default=4096, ge=256)  # prompt + output tokens per request
    gpu_memory_utilization: float = Field(default=0.35, gt=0.0, le=1.0)  # CUDA only: vLLM's share of GPU memory
    # CPU: vLLM reads gpu_memory_utilization as a share of NUMA node 0 (host-dependent; can leave a negative KV
    # budget), so the KV cache is sized in bytes instead. None = max_model_len x max_num_seqs x the model's
    # per-token KV size, clipped to [256 MiB, 4 GiB] (llmrec.llm.vllm_engine.kv_cache_bytes). On CUDA an
    # explicit value replaces gpu_memory_utilization.
    kv_cache_bytes: int | None = Field(default=None, ge=16 * 2**20)
    max_num_seqs: int = Field(default=256, ge=1)  # vLLM: sequences decoded together (and the KV size above)
    # vLLM KV-cache block in tokens; None = vLLM's default (128 on CPU, 16 on CUDA). Prefix caching reuses whole
    # blocks only, so a shared system prompt is served from the cache up to its last full block.
    block_size: int | None = Field(default=None, ge=16, multiple_of=16)
    enforce_eager: bool = True  # no CUDA graphs / torch.compile: faster start, needed on CPU
    enable_lora: bool = True  # vLLM engine accepts LoRARequests (costs decoding speed even without one)
    max_lora_rank: int = 16  # largest adapter rank the vLLM engine accepts
    max_loras: int = Field(default=2, ge=1)  # adapters resident in one vLLM batch
    seed: int = 0
    batch_size: int = Field(default=16, ge=1)  # transformers: prompts per forward; server: concurrent requests
    server_url: str | None = None  # backend="server": e.g. http://127.0.0.1:8000
    server_model: str | None = None  # backend="server": served base model name (default: the first listed)
    request_timeout_s: float = Field(default=600.0, gt=0.0)  # backend="server": per HTTP request

    @model_validator(mode="after")
    def _llm(self) -> Self:
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_LORA_RANKS} (vLLM's choices), "
                             f"got {self.max_lora_rank}")
        if self.backend == "server" and not self.server_url:
            raise ValueError("backend='server' needs server_url (e.g. http://127.0.0.1:8000)")
        if self.server_url is not None and not self.server_url.startswith(("http://", "https://")):
            raise ValueError(f"server_url must start with http:// or https://, got {self.server_url!r}")
        return self


class RecommenderConfig(StageConfig):
    """The root config: every stage's config, saved with a recommender folder (`llmrec.pipeline`)."""

    data: DataConfig = Field(default_factory=DataConfig)
    narrative: NarrativeConfig = Field(default_factory=NarrativeConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    towers: TowerConfig = Field(default_factory=TowerConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    coldstart: ColdStartConfig = Field(default_factory=ColdStartConfig)
    jobs: JobConfig = Field(default_factory=JobConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)  # the dataset's attribute vocabulary (tags)


# --- Offline comparison (llmrec.eval.run) ---------------------------------------------------------

EVAL_MODELS = (
    "popularity", "item_knn", "sasrec_bce", "sasrec_ce", "three_tower_notag", "three_tower_heuristic_tags",
    "three_tower_llm_tags", "three_tower_llm_lora_tags", "three_tower_llm_rerank", "three_tower_sampled_softmax",
    "three_tower_no_logq",
    "three_tower_no_mixed_negatives", "three_tower_fixed_temperature", "coldstart_none", "coldstart_early_fusion",
    "coldstart_late_fusion", "sasrec_ce_content", "three_tower_ids_only", "sasrec_ce_llm_ranker",
    "three_tower_llm_ranker", "three_tower_llm_self_tags", "three_tower_llm_self2_tags",
)  # fmt: skip


class EvaluateConfig(StageConfig):
    """The offline comparison (see `llmrec.eval.run`): one split, one metric code, every model, 3 seeds.

    `models` picks rows (all by default); rows that need an input that is not given (a mined-tags Parquet,
    an LLM) are left out and the report says why. Model configs are nested so the settings file freezes them.
    """

    dataset: str = "ml-100k"
    models: tuple[str, ...] = EVAL_MODELS
    seeds: tuple[int, ...] = (0, 1, 2)  # each seed trains every learned model anew
    ablation_seeds: tuple[int, ...] | None = None  # seeds of the ablation rows (a subset of seeds); None = seeds
    k: int = Field(default=10, ge=1)  # cut-off of ndcg/hr/coverage/long-tail share
    cold_lengths: tuple[int, ...] = (0, 1, 3, 5)  # cold_user_N slices: held-out users' first N events
    short_lengths: tuple[int, ...] = (1, 3, 5)  # short_N slices: warm users' last N events before the test item
    cold_user_share: float = Field(default=0.15, ge=0.0, lt=1.0)  # users held out of every model's training
    cold_user_seed: int = 0  # which users are held out (recorded in the split report and hash)
    bootstrap_samples: int = Field(default=2000, ge=1)  # paired bootstrap over users (diff vs sasrec_ce)
    long_tail_mass: float = Field(default=0.8, gt=0.0, lt=1.0)  # head = most popular items holding this share
    max_users: int | None = Field(default=None, ge=1)  # evaluate a seeded sample of test users (None = all)
    sample_seed: int = 0  # the user samples (max_users, rerank_users, coldstart_users)
    score_batch_size: int = Field(default=256, ge=1)  # users per scorer call
    knn_neighbors: int = Field(default=50, ge=1)
    knn_shrink: float = Field(default=10.0, ge=0.0)
    sasrec: SASRecConfig = Field(default_factory=SASRecConfig)  # loss is set per row (bce / ce)
    towers: TowerConfig = Field(default_factory=TowerConfig)  # ablation rows flip one switch each
    llm_tags: str | None = None  # mined-tags Parquet (or its folder) of `llmrec mine-interests`, base model
    llm_lora_tags: str | None = None  # the same, mined with the LoRA adapter
    # The same tables mined as of the VALIDATION time (`mine-interests --as-of valid`): when given, the row
    # trains, early-stops and picks beta on these, and only the test slices read the test-time table above.
    llm_tags_valid: str | None = None
    llm_lora_tags_valid: str | None = None
    # Tags mined with a self-trained adapter (`llmrec finetune --task tags-self-train`, one round's folder): the
    # row three_tower_llm_self_tags, against llm_lora_tags (round 0) and the heuristic tags; llm_self2_tags: round 2's
    # (three_tower_llm_self2_tags, against round 1 and round 0).
    llm_self_tags: str | None = None
    llm_self_tags_valid: str | None = None
    llm_self2_tags: str | None = None
    llm_self2_tags_valid: str | None = None
    use_llm: bool = True  # False: skip the rows that call an LLM (re-ranking, cold start)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    rerank_users: int = Field(default=50, ge=1)  # LLM re-ranking is costly on CPU: a seeded user sample
    rerank_top: int = Field(default=20, ge=1)  # three-tower candidates the LLM re-orders
    listwise: ListwiseConfig = Field(default_factory=ListwiseConfig)  # the *_llm_ranker rows (llmrec.listwise)
    ranker_adapter: str | None = None  # LoRA adapter of `finetune_ranker` (None: the base model ranks)
    ranker_users: int = Field(default=100, ge=1)  # seeded sample: lambda chosen on their validation targets
    # Validation search of the tower settings before any row trains (retrieval.tune): each grid point is one
    # training, so it is opt-in; the winner replaces `towers` for every tower row and the trials go in the notes.
    tune_towers: bool = False
    # lr x dropout (retrieval.tune.DEFAULT_GRID). Amazon Magazine, valid NDCG@10 over 3 seeds after the position
    # fix: default 0.196, lr 1e-3 0.202, dropout 0.5 0.216, both 0.188, sampled softmax 0.200 (spread ~0.008).
    tower_grid: dict[str, tuple] = Field(default_factory=lambda: dict(DEFAULT_TOWER_GRID))
    narrative: NarrativeConfig = Field(default_factory=lambda: NarrativeConfig(max_tokens=384))  # re-rank prompts
    coldstart: ColdStartConfig = Field(default_factory=ColdStartConfig)  # `fusion` is set per row
    coldstart_users: int = Field(default=100, ge=1)  # users whose cold histories the LLM augments
    coldstart_cache: str | None = None  # JSON cache of imagined histories (None: no cache)
    # Behaviour types whose events are test/validation targets (None: the dataset's, its positive item types;
    # every rating for rating-derived logs such as ML-100K). Stated in the settings as target_behaviors.
    target_behaviors: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _evaluate(self) -> Self:
        unknown = [m for m in self.models if m not in EVAL_MODELS]
        if not self.models or unknown:
            raise ValueError(f"models must be a non-empty subset of {list(EVAL_MODELS)}, got unknown {unknown}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        if self.ablation_seeds is not None and (not self.ablation_seeds or set(self.ablation_seeds) - set(self.seeds)):
            raise ValueError(f"ablation_seeds must be a non-empty subset of seeds {list(self.seeds)}, got "
                             f"{list(self.ablation_seeds)}")
        if any(n < 0 for n in self.cold_lengths) or len(set(self.cold_lengths)) != len(self.cold_lengths):
            raise ValueError(f"cold_lengths must be distinct integers >= 0, got {list(self.cold_lengths)}")
        if any(n < 1 for n in self.short_lengths) or len(set(self.short_lengths)) != len(self.short_lengths):
            raise ValueError(f"short_lengths must be distinct integers >= 1, got {list(self.short_lengths)}")
        if self.coldstart.max_events < max(self.cold_lengths, default=0):
            raise ValueError(f"coldstart.max_events ({self.coldstart.max_events}) must cover the longest cold "
                             f"slice ({max(self.cold_lengths)}), or those users are never augmented")
        return self
