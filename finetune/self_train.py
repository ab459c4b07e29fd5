"""RecGPT's self-training evolution for the tag task: sample, reward by tag-to-item retrieval, keep, retrain.

Round r (r = 1..rounds; round 0 is the given SFT adapter), over the cuts `finetune.build_sft` makes of the
TRAIN split (the same cuts, narratives and prompts as the SFT data):

1. Sample. Every cut's mining prompt is asked `SelfTrainConfig.samples` times, in ONE batched, schema-guided
   call (`generate_validated`, no retry: a failed sample is just a failed sample, counted) at
   `temperature` > 0 from the current adapter. Each answer is validated like mining's (`to_profile_parts`:
   placeholders, too few distinct interests, tags naming seen titles are refused or dropped).
2. Reward. A tag list (its first `MiningConfig.max_tags` tags) is scored by `tag_reward`: tag-to-item
   retrieval (`llmrec.eval.tag_metrics.match_scores`, pessimistic ties, `llmrec.metrics.target_ranks`),
   NDCG@10 averaged over the user's AFTER-cut TRAIN events with a positive taste weight among the first
   `FinetuneConfig.tag_horizon` (the events the SFT tag target reads). Each target ranks among the items the
   user did not take: the before-cut items and the other targets are excluded. The history-frequency tags of
   the before-cut events (`llmrec.tags.history_tags`) and the SFT target's tags are scored the same way.
3. Keep. A cut keeps its best sample only where that reward beats the history-frequency list's (strictly).
   Kept answers pool across rounds: a cut holds the best answer any round found.
4. Retrain. The next adapter is a fresh LoRA from the base model on the SFT examples + the pooled kept
   answers (`finetune.train_lora`). Continuing from the current adapter would compound its own biases (the
   kept answers are its own words, so the model is pulled towards what it already says; RecGPT warns of this
   drift) and make a round's adapter depend on the whole chain of earlier trainings; retraining from base
   keeps the ground-truth SFT targets as the anchor and makes round r a function of (SFT data, kept pool).
   Its cost is one full SFT training per round.

Nothing from the validation or test events can enter: the pool is built from `sft_split(...).train` only
(the split that holds the held-out items out), and the prompts, SFT targets, reward targets and history lists
are all computed from a cut's `before`/`after` train events.

Output folder: `round-1/`, `round-2/`, ... (each a peft adapter folder with config.json and a manifest that
carries its round record), `rounds.json` (every round's counts and mean rewards and the run's context: split
hash, prompt hashes, configs) and `pool.jsonl` (the kept answers), both rewritten after each round.
`resume=True` continues such a folder at the round after its last one, from that round's adapter and pool, when
its context equals this run's (rounds aside): a run stopped after round r costs only the rounds still due.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from finetune.build_sft import (
    TASTE_WEIGHTS,
    taste_weights,
    CutExample,
    build_cut_examples,
    dump_answer,
)
from finetune.train_lora import SFTExample, train_lora
from llmrec.config import MiningConfig, NarrativeConfig, SelfTrainConfig
from llmrec.data import ItemVocab
from llmrec.errors import AdapterError, DataError
from llmrec.eval.tag_metrics import RETRIEVAL_KS, TagCatalogue, match_scores
from llmrec.interests import (
    interests_wire,
    round_robin,
    seen_title_patterns,
    to_profile_parts,
    wire_interest,
)
from llmrec.llm import LLMBackend, Messages
from llmrec.llm.structured import (
    GenerationSettings,
    GenerationStats,
    generate_validated,
    repair_truncated,
)
from llmrec.metrics import ndcg_at_k, target_ranks
from llmrec.schema import Item
from llmrec.tags import history_tags, item_attributes, tag_attributes
from llmrec.vocab import AttributeVocab

log = logging.getLogger(__name__)

TASK = "tags-self-train"
ROUNDS_FILE = "rounds.json"
POOL_FILE = "pool.jsonl"
# The facts of a run that every round depends on; a resumed run must match them (self_train_config: rounds aside)
CONTEXT_KEYS = ("dataset", "split_hash", "prompt_hashes", "mining_config", "self_train_config")


# --- The pool of cuts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One cut of the pool: its SFT example (prompt + target) and what scores answers to it."""

    built: CutExample
    targets: np.ndarray  # [T] vocabulary indices of the after-cut train items the tags must retrieve
    seen: np.ndarray  # [S] vocabulary indices of the before-cut items (never ranked)
    history_tags: tuple[str, ...]  # the history-frequency list of the before-cut events
    sft_tags: tuple[str, ...]  # the SFT target's tags, in the order mining reads them
    titles: re.Pattern | None = None  # titles of the narrative's items: tags naming them are dropped

    @property
    def key(self) -> str:
        return self.built.cut.key

    @property
    def prompt(self) -> Messages:
        return [dict(m) for m in self.built.example.messages[:-1]]


def reward_targets(after: pd.DataFrame, horizon: int, vocab: ItemVocab,
                   taste: dict[str, float] | None = None) -> np.ndarray:
    """[T] the items of the first `horizon` after-cut events with a positive taste weight (`taste`, from
    `build_sft.taste_weights`; None: `TASTE_WEIGHTS`), first take only."""
    taste = TASTE_WEIGHTS if taste is None else taste
    head = after.head(horizon)
    liked = head[[taste.get(b, 0.0) > 0 for b in head["behavior"]]]
    return vocab.encode(list(dict.fromkeys(liked["item_id"])))


def answer_tags(answer: str, wire: Any, k: int) -> list[str]:
    """The first k tags of a wire answer in mining's order (round-robin over its interests)."""
    obj = wire.model_validate_json(answer)
    return round_robin([list(w.t) for w in obj.i])[:k]


def build_cases(built: Sequence[CutExample], items: dict[str, Item], vocab: ItemVocab, horizon: int,
                mining: MiningConfig, attrs: AttributeVocab | None = None,
                taste: dict[str, float] | None = None) -> tuple[list[Case], dict[str, int]]:
    """A `Case` per SFT example; cuts with no reward target are skipped and counted."""
    wire = interests_wire(mining)
    cases, skipped = [], {}
    for b in built:
        targets = reward_targets(b.cut.after, horizon, vocab, taste)
        if targets.size == 0:
            skipped["no_reward_target"] = skipped.get("no_reward_target", 0) + 1
            continue
        before = list(b.cut.before["item_id"])
        cases.append(Case(
            built=b, targets=targets, seen=vocab.encode(before),
            history_tags=tuple(history_tags([items[i] for i in before], mining.max_tags, attrs)),
            sft_tags=tuple(answer_tags(b.example.messages[-1]["content"], wire, mining.max_tags)),
            titles=seen_title_patterns(b.narrative.item_ids, items)))
    return cases, skipped


def tag_catalogue(items: dict[str, Item], vocab: ItemVocab, attrs: AttributeVocab | None = None) -> TagCatalogue:
    """The tag-to-item catalogue under the dataset's attribute vocabulary, in `vocab` order."""
    return TagCatalogue.build([items[i] for i in vocab.ids], lambda it: item_attributes(it, attrs),
                              lambda tag: tag_attributes(tag, attrs))


# --- Reward and selection -----------------------------------------------------------------------------


def tag_reward(tags: Sequence[str], targets: np.ndarray, seen: np.ndarray, catalogue: TagCatalogue) -> float:
    """Mean tag-to-item NDCG@10 of `targets` [T] under `tags`, each target ranked among the items the user
    did not take (`seen` [S] and the other targets excluded; pessimistic ties)."""
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size == 0:
        raise DataError("a tag reward needs at least one target item")
    scores = np.repeat(match_scores([list(tags)], catalogue), len(targets), axis=0)  # [T, V]
    seen = np.asarray(seen, dtype=np.int64)
    exclude = [np.concatenate([seen, np.delete(targets, j)]) for j in range(len(targets))]
    return ndcg_at_k(target_ranks(scores, targets, exclude), RETRIEVAL_KS["ndcg"])


def select_best(rewards: Sequence[float | None], baseline: float) -> int | None:
    """Index of the best valid sample (None = invalid; first on ties), or None when it does not beat
    `baseline` (the history-frequency list's reward) strictly."""
    valid = [(r, i) for i, r in enumerate(rewards) if r is not None]
    if not valid:
        return None
    best = max(valid, key=lambda ri: (ri[0], -ri[1]))
    return best[1] if best[0] > baseline else None


# --- One round ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One validated sample: the cleaned answer (what would be trained on), its tags and reward."""

    answer: str
    tags: tuple[str, ...]
    reward: float


def clean_answer(parsed: Any, item_ids: Sequence[str], wire: Any, mining: MiningConfig) -> str:
    """The wire answer of what mining kept from a sample (`to_profile_parts`): cited lines that exist, tags
    that survived, the first `max_tags` of them, so training never teaches what the parser drops."""
    line_of: dict[str, int] = {}
    for n, item_id in enumerate(item_ids, start=1):
        line_of.setdefault(item_id, n)
    groups: dict[str, list[str]] = {i.name: [] for i in parsed.interests}
    for tag in parsed.tags:
        groups[tag.interest].append(tag.text)
    obj = [wire_interest(i.name, [line_of[e] for e in i.evidence], groups[i.name], mining) for i in parsed.interests]
    return dump_answer(wire.model_validate(obj).model_dump())


def sample_round(cases: Sequence[Case], backend: LLMBackend, adapter: str | Path | None, config: SelfTrainConfig,
                 catalogue: TagCatalogue, mining: MiningConfig,
                 attrs: AttributeVocab | None = None) -> tuple[list[list[Sample | None]], GenerationStats]:
    """`config.samples` answers per case from one batched call; per case, a `Sample` or None (invalid)."""
    wire = interests_wire(mining)
    prompts = [c.prompt for c in cases for _ in range(config.samples)]
    case_of = [c for c in cases for _ in range(config.samples)]

    def check(obj: Any, i: int) -> str | None:
        try:
            to_profile_parts(obj, case_of[i].built.narrative.item_ids, case_of[i].titles, mining, attrs)
        except ValueError as e:
            return str(e)
        return None

    # retries=0: a failed sample is one of the `samples` draws, counted, not re-asked; batch_size=None: one call.
    settings = GenerationSettings(max_tokens=mining.max_tokens, temperature=config.temperature, retries=0,
                                  frequency_penalty=mining.frequency_penalty, batch_size=None,
                                  adapter=None if adapter is None else str(adapter))
    results, stats = generate_validated(backend, prompts, schema=wire, check=check, fallback=lambda i: None,
                                        config=settings, repair=repair_truncated)
    out: list[list[Sample | None]] = [[] for _ in cases]
    for i, res in enumerate(results):
        case = case_of[i]
        if res.fallback:
            out[i // config.samples].append(None)
            continue
        parsed = to_profile_parts(res.value, case.built.narrative.item_ids, case.titles, mining, attrs)
        tags = tuple(t.text for t in parsed.tags)
        answer = clean_answer(parsed, case.built.narrative.item_ids, wire, mining)
        reward = tag_reward(tags, case.targets, case.seen, catalogue)
        out[i // config.samples].append(Sample(answer=answer, tags=tags, reward=reward))
    return out, stats


@dataclass
class Pool:
    """The kept answers: per cut key, the best-rewarded sample of any round that beat the history list."""

    kept: dict[str, tuple[Sample, SFTExample]] = field(default_factory=dict)
    round_of: dict[str, int] = field(default_factory=dict)  # per cut key, the round that found its answer

    def offer(self, case: Case, sample: Sample, r: int = 0) -> bool:
        """Keep `sample` (found in round `r`) for its cut unless an earlier round's kept answer scores at least
        as well."""
        held = self.kept.get(case.key)
        if held is not None and held[0].reward >= sample.reward:
            return False
        ex = case.built.example
        self.kept[case.key] = (sample, SFTExample(
            user_id=ex.user_id, task=TASK, cut_time=ex.cut_time,
            messages=(*ex.messages[:-1], {"role": "assistant", "content": sample.answer})))
        self.round_of[case.key] = r
        return True

    def examples(self) -> list[SFTExample]:
        return [ex for _, ex in sorted(self.kept.values(), key=lambda se: (se[1].user_id, str(se[1].cut_time)))]

    def write(self, path: Path) -> Path:
        """One JSON line per kept cut (key, round, reward, tags, answer), atomically replaced."""
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w") as f:
            for key in sorted(self.kept):
                s = self.kept[key][0]
                f.write(json.dumps({"key": key, "round": self.round_of.get(key, 0), "reward": s.reward,
                                    "tags": list(s.tags), "answer": s.answer}) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: Path, cases: Sequence[Case]) -> "Pool":
        """The pool `write` left, its answers re-attached to this run's cases (a key no case has is an error)."""
        by_key = {c.key: c for c in cases}
        pool = cls()
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                row = json.loads(line)
                case = by_key[row["key"]]
                sample = Sample(answer=row["answer"], tags=tuple(row["tags"]), reward=float(row["reward"]))
            except KeyError as e:
                raise AdapterError(f"{path}, line {n}: no field or no cut {e} in this run's cuts") from None
            except (ValueError, TypeError) as e:
                raise AdapterError(f"{path}, line {n}: {e}") from None
            pool.offer(case, sample, int(row.get("round", 0)))
        return pool


def _mean(xs: Sequence[float]) -> float | None:
    return round(float(np.mean(xs)), 6) if len(xs) else None


def keep_round(r: int, cases: Sequence[Case], samples: Sequence[Sequence[Sample | None]], stats: GenerationStats,
               catalogue: TagCatalogue, pool: Pool) -> dict[str, Any]:
    """Select per case, offer the winners to `pool`, and return the round's record (counts, mean rewards)."""
    hist = [tag_reward(c.history_tags, c.targets, c.seen, catalogue) for c in cases]
    sft = [tag_reward(c.sft_tags, c.targets, c.seen, catalogue) for c in cases]
    best_valid, kept_rewards, kept_cases, pooled_new = [], [], [], 0
    for i, (c, draws) in enumerate(zip(cases, samples)):
        rewards = [None if s is None else s.reward for s in draws]
        if any(x is not None for x in rewards):
            best_valid.append(max(x for x in rewards if x is not None))
        pick = select_best(rewards, hist[i])
        if pick is not None:
            kept_cases.append(i)
            kept_rewards.append(draws[pick].reward)
            pooled_new += pool.offer(c, draws[pick], r)
    all_rewards = [s.reward for draws in samples for s in draws if s is not None]
    return {
        "round": r, "cuts": len(cases), "sampled": stats.answers, "valid": stats.valid_final,
        "parse_failures": stats.parse_failures, "semantic_failures": stats.semantic_failures,
        "kept": len(kept_cases), "pooled_new": pooled_new, "pool": len(pool.kept),
        "reward_kept": _mean(kept_rewards),
        "reward_history_on_kept": _mean([hist[i] for i in kept_cases]),
        "reward_sft_on_kept": _mean([sft[i] for i in kept_cases]),
        "reward_history": _mean(hist), "reward_sft_target": _mean(sft),
        "reward_best_sample": _mean(best_valid), "reward_sample": _mean(all_rewards),
        "generation": {k: v for k, v in stats.to_dict().items() if k != "examples"},
        "failure_examples": stats.examples[:3],
    }


# --- The rounds ---------------------------------------------------------------------------------------


@dataclass
class SelfTrainResult:
    out: Path
    rounds: list[dict[str, Any]]
    final_adapter: Path  # the last round's adapter (the round-0 adapter when no round kept anything)


@dataclass(frozen=True)
class Prepared:
    """What every round reuses: the pool of cases, the SFT examples, the catalogue, the manifest's facts."""

    cases: list[Case]
    sft_examples: list[SFTExample]
    catalogue: TagCatalogue
    attrs: AttributeVocab | None
    manifest: dict[str, Any]


def prepare_cases(dataset: Any, config: SelfTrainConfig, tokenizer: Any, mining: MiningConfig) -> Prepared:
    """The train-split cuts of `build_sft`, their SFT examples (every train user: each round retrains on all of
    them) and the reward data of the cuts sampled (those of the first `max_users` users by id)."""
    from finetune import first_users, sft_split
    from llmrec.interests import PROMPTS
    from llmrec.llm.prompts import prompt_hashes
    from llmrec.vocab import vocabulary_of

    ft = config.finetune
    split = sft_split(dataset, ft)
    train = split.train  # TRAIN events only: valid/test are never passed on
    sampled = set(first_users(train, config.max_users)["user_id"].astype(str))
    attrs = vocabulary_of(dataset)
    behaviors = dataset.behavior_vocab
    built, report = build_cut_examples(train, dataset.item_index, dataset.items, ft, tokenizer, mining, attrs,
                                       behaviors, dataset.queries)
    vocab = ItemVocab.from_items(dataset.items)
    cases, skipped = build_cases([b for b in built if str(b.cut.user_id) in sampled], dataset.item_index, vocab,
                                 ft.tag_horizon, mining, attrs, taste_weights(behaviors))
    if not cases:
        raise DataError(f"no self-training cut could be built from {dataset.name}: {report.to_dict()}, {skipped}")
    manifest = {
        "task": TASK, "dataset": dataset.name, "split_hash": split.hash, "split_report": split.report,
        "prompt_hashes": prompt_hashes(PROMPTS), "mining_config": mining.model_dump(mode="json"),
        "narrative_config": NarrativeConfig(max_tokens=ft.narrative_max_tokens or mining.narrative_tokens
                                            ).model_dump(mode="json"),
        "sft_report": report.to_dict(), "cases_skipped": skipped, "max_users": config.max_users,
        "self_train_config": config.model_dump(mode="json"),
    }
    return Prepared(cases=cases, sft_examples=[b.example for b in built], catalogue=tag_catalogue(
        dataset.item_index, vocab, attrs), attrs=attrs, manifest=manifest)


def clear_rounds(out: Path, after: int | None = None) -> None:
    """Remove an earlier run's round adapters, rounds.json and pool.jsonl from `out` (only those: the folder is
    replaced); `after=r`: only the round adapters after round r, what an interrupted round left."""
    if out.is_file():
        raise AdapterError(f"--out {out} is a file, not a folder")
    for old in out.glob("round-*"):
        n = old.name.removeprefix("round-")
        if old.is_dir() and n.isdigit() and int(n) > (after or 0):
            shutil.rmtree(old)
    if after is None:
        (out / ROUNDS_FILE).unlink(missing_ok=True)
        (out / POOL_FILE).unlink(missing_ok=True)


def run_context(manifest: dict[str, Any]) -> dict[str, Any]:
    """The `CONTEXT_KEYS` of a manifest, the self-training config without its `rounds`."""
    ctx = {k: manifest.get(k) for k in CONTEXT_KEYS}
    if isinstance(ctx["self_train_config"], dict):
        ctx["self_train_config"] = {k: v for k, v in ctx["self_train_config"].items() if k != "rounds"}
    return json.loads(json.dumps(ctx, default=str))


def write_rounds(out: Path, adapter: Path, records: list[dict[str, Any]],
                 context: dict[str, Any] | None = None) -> Path:
    """rounds.json: every finished round's record and the run's context, atomically replaced after each round."""
    tmp = out / f".{ROUNDS_FILE}.tmp"
    tmp.write_text(json.dumps({"task": TASK, "round_0": str(adapter), "context": context, "rounds": records},
                              indent=2, default=str) + "\n")
    tmp.replace(out / ROUNDS_FILE)
    return out / ROUNDS_FILE


@dataclass
class Resumed:
    records: list[dict[str, Any]]
    pool: Pool
    current: Path  # the adapter the next round samples from
    lost: int  # kept answers the last round recorded that the pool file no longer holds


def resume_rounds(out: Path, adapter: Path, prep: Prepared) -> Resumed:
    """The finished rounds of an earlier run in `out`, checked against this run (same round-0 adapter, same
    context: rounds.json's, or for a folder written before it carried one, its last adapter's manifest).

    A folder without `pool.jsonl` (written before the pool was saved) resumes with an empty pool: the next
    round's record says how many kept answers were lost (`pool_lost`), as its training set lacks them."""
    path = out / ROUNDS_FILE
    earlier = json.loads(path.read_text())
    records = list(earlier.get("rounds") or [])
    if Path(earlier.get("round_0", "")).resolve() != adapter.resolve():
        raise AdapterError(f"--resume: {path} continues round-0 adapter {earlier.get('round_0')}, not {adapter}")
    trained = [r["adapter"] for r in records if r.get("adapter")]
    current = out / trained[-1] if trained else adapter
    context = earlier.get("context")
    if context is None and trained:
        manifest = current / "manifest.json"
        context = run_context(json.loads(manifest.read_text())) if manifest.is_file() else None
    if context is None:
        raise AdapterError(f"--resume: {path} records no context (split, prompts, configs) to check this run "
                           "against; run without --resume")
    mine = run_context(prep.manifest)
    differ = sorted(k for k in CONTEXT_KEYS if context.get(k) != mine[k])
    if differ:
        raise AdapterError(f"--resume: {out}'s rounds were run with other {', '.join(differ)}; run without "
                           "--resume (or with the same options)")
    pool_path = out / POOL_FILE
    pool = Pool.read(pool_path, prep.cases) if pool_path.is_file() else Pool()
    lost = (records[-1].get("pool", 0) if records else 0) - len(pool.kept)
    if lost:
        log.warning("--resume: %s holds %d kept answers, %d fewer than the last round recorded: the next rounds "
                    "train without the missing ones", pool_path, len(pool.kept), lost)
    return Resumed(records=records, pool=pool, current=current, lost=lost)


def self_train(dataset: Any, config: SelfTrainConfig, adapter: str | Path, out: str | Path, *,
               backend: LLMBackend | None = None, serve: Callable[[Path], LLMBackend] | None = None,
               model: str | Path | None = None, mining: MiningConfig | None = None,
               resume: bool = False) -> SelfTrainResult:
    """`config.rounds` rounds of sample -> reward -> keep -> retrain from the SFT adapter `adapter` (round 0).

    The sampler, one of: `backend`, which serves the base `model` and is handed each round's adapter folder
    (vLLM LoRARequest, or transformers' peft wrapper); or `serve(adapter_dir)`, which returns a backend serving
    that adapter merged into the weights (`llmrec.llm.model.merged_model`: the base model's speed, where vLLM's
    CPU LoRA path is several times slower), closed after the round's sampling so training has the memory.
    `mining` must be the one the adapter was trained with (its prompt and wire schema). Writes out/round-r
    adapters, out/rounds.json and out/pool.jsonl; see the module docstring. `resume`: continue `out`'s rounds
    (`resume_rounds`) up to `config.rounds` instead of replacing them.
    """
    if (backend is None) == (serve is None):
        raise ValueError("self_train needs exactly one of backend (adapters passed per call) and serve (merged)")
    from llmrec.llm.base import read_adapter_rank
    from llmrec.llm.model import load_tokenizer, resolve_model

    mining = mining or MiningConfig()
    adapter, out = Path(adapter), Path(out)
    read_adapter_rank(adapter)  # AdapterError now, not after the cuts, when it is no peft adapter folder
    if out.resolve() == adapter.resolve():
        raise AdapterError(f"--out {out} is the round-0 adapter itself; write the rounds to another folder")
    if resume and not (out / ROUNDS_FILE).is_file():  # now, not after the cuts
        raise AdapterError(f"--resume: no {ROUNDS_FILE} in {out}; run without --resume to start at round 1")
    prep = prepare_cases(dataset, config, load_tokenizer(resolve_model(model)), mining)
    log.info("self-training on %d cuts (%d SFT examples), %d samples each, %d rounds", len(prep.cases),
             len(prep.sft_examples), config.samples, config.rounds)
    out.mkdir(parents=True, exist_ok=True)
    context = run_context(prep.manifest)
    if resume:
        done = resume_rounds(out, adapter, prep)
        pool, records, current, lost = done.pool, done.records, done.current, done.lost
        clear_rounds(out, after=len(records))
        log.info("resuming after round %d from %s (pool %d)", len(records), current, len(pool.kept))
    else:
        clear_rounds(out)
        pool, records, current, lost = Pool(), [], adapter, 0
    for r in range(len(records) + 1, config.rounds + 1):
        if serve is None:
            samples, stats = sample_round(prep.cases, backend, current, config, prep.catalogue, mining, prep.attrs)
        else:
            sampler = serve(current)
            try:
                samples, stats = sample_round(prep.cases, sampler, None, config, prep.catalogue, mining, prep.attrs)
            finally:
                sampler.close()
        record = keep_round(r, prep.cases, samples, stats, prep.catalogue, pool)
        record["sampled_from"] = str(current)
        if lost:  # only the first resumed round: the pool it starts from lacks answers an earlier round kept
            record["pool_lost"], lost = lost, 0
        if pool.kept:
            target = out / f"round-{r}"
            extra = {**prep.manifest, "round": r, "round_0_adapter": str(adapter), "rounds": [*records, record]}
            result = train_lora([*prep.sft_examples, *pool.examples()], config.finetune, target, model=model,
                                manifest_extra=extra)
            record.update(adapter=target.name, train_examples=result.train_examples, steps=result.steps)
            current = target
        else:  # nothing beat the history list: retraining would only repeat the SFT run
            record.update(adapter=None, train_examples=0, steps=0)
        records.append(record)
        log.info("round %d: %d sampled, %d valid, %d kept (pool %d); mean reward kept %s vs history %s vs SFT "
                 "target %s", r, record["sampled"], record["valid"], record["kept"], record["pool"],
                 record["reward_kept"], record["reward_history_on_kept"], record["reward_sft_on_kept"])
        pool.write(out / POOL_FILE)
        write_rounds(out, adapter, records, context)
    return SelfTrainResult(out=out, rounds=records, final_adapter=current)
