"""The batch side of the product: build a recommender folder from a dataset, stage by stage.

    narratives -> mine interests/tags (sharded job) -> train three towers with the LLM tags
    -> explanations for the facts the API serves (item, matching interest, evidence items; sharded job)
    -> imagined histories per cold-start profile segment -> Recommender.save_pretrained

Every LLM stage runs through `llmrec.jobs.run_sharded`, so a killed build resumes where it stopped
(finished shards are skipped). With the local executor one LLM backend is built once and shared by all
stages; with the Ray executor each job's actors build their own (`_BackendProcess`).
Narratives and mined tags are computed as of each user's test target (`Split.history("test")`), so the
same mined tags serve the offline evaluation without leaking the held-out item.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from explain.explain import ExplainStats, make_explain_process, pair_key
from explain.facts import ExplainFacts
from explain.table import PROMPT as EXPLAIN_PROMPT
from explain.table import ExplanationTable, explanations_from_frame
from llmrec.coldstart import Catalogue, ExamplePool, imagine_histories
from llmrec.config import LLMConfig, RecommenderConfig
from llmrec.data import Dataset
from llmrec.eval.tag_metrics import source_shares
from llmrec.interests import PROMPTS, MiningStats, mine_interests, profiles_from_table, profiles_to_table
from llmrec.jobs import SHARD_STATS, read_shards, run_sharded, sum_shard_stats
from llmrec.llm import LLMBackend, make_backend
from llmrec.io import package_version
from llmrec.llm.model import merged_model
from llmrec.narrative import load_narrative_tokenizer, render_narratives
from llmrec.pipeline import Recommender, profile_segment
from llmrec.llm.prompts import prompt_hashes
from llmrec.schema import Interest, InterestProfile, Narrative, Tag
from llmrec.tags import history_tags
from llmrec.vocab import AttributeVocab, vocabulary_of
from llmrec.data.split import Split, split_leave_one_out
from retrieval.encoder import TextEncoder
from retrieval.train import build_manifest, train_towers

log = logging.getLogger(__name__)


@dataclass
class _BackendProcess:
    """A picklable process factory for Ray actors: builds the backend once, inside the worker."""

    llm: LLMConfig
    make: Callable[[LLMBackend], Callable[[list[str]], pd.DataFrame]]

    def __call__(self) -> Callable[[list[str]], pd.DataFrame]:
        return self.make(make_backend(self.llm))


def _run_llm_job(keys: Sequence[str], make: Callable[[LLMBackend], Callable[[list[str]], pd.DataFrame]],
                 out: Path, config: RecommenderConfig, backend: LLMBackend | None, executor: str, meta: dict,
                 key_column: str = "user_id"):
    jobs = config.jobs.model_copy(update={"key_column": key_column})
    if executor == "ray":
        return run_sharded(keys, None, out, jobs, executor="ray", actor_factory=_BackendProcess(config.llm, make),
                           meta=meta)
    return run_sharded(keys, make(backend), out, jobs, executor="local", meta=meta)


def mine_all(narratives: Sequence[Narrative], dataset: Dataset, out: Path, config: RecommenderConfig,
             backend: LLMBackend | None, executor: str = "local",
             adapter: str | None = None, label: str | None = None,
             attrs: AttributeVocab | None = None) -> tuple[list[InterestProfile], MiningStats]:
    """Interests and tags for every narrative, as a resumable sharded job; returns validated profiles.

    Each shard's rows carry its `MiningStats` (column `llmrec.jobs.SHARD_STATS`, JSON) so a resumed job still reports
    the counts of every shard, including those a previous run finished. `label` names the model in the
    profiles (e.g. "vllm+adapters/x" for a merged adapter); default the backend's name (+ adapter).
    """
    by_user = {n.user_id: n for n in narratives}
    items = dataset.item_index
    attrs = attrs or vocabulary_of(dataset, config.vocab)

    def make(llm: LLMBackend):
        def process(keys: list[str]) -> pd.DataFrame:
            profiles, stats = mine_interests([by_user[k] for k in keys], llm, config.mining, adapter=adapter,
                                             items=items, label=label, attrs=attrs)
            frame = profiles_to_table(profiles).to_pandas()
            frame[SHARD_STATS] = json.dumps(stats.to_dict(), default=str)
            return frame
        return process

    meta = {"stage": "mine", "mining": config.mining.model_dump(mode="json"),
            "narrative": config.narrative.model_dump(mode="json"), "adapter": adapter,
            "model": config.llm.model, "label": label, "prompt_hashes": prompt_hashes(PROMPTS)}
    result = _run_llm_job(list(by_user), make, out, config, backend, executor, meta)
    frame = read_shards(result.out_dir)
    stats = sum_shard_stats(frame, MiningStats, keep=10)
    profiles = profiles_from_table(pa.Table.from_pandas(frame.drop(columns=[SHARD_STATS]), preserve_index=False))
    return profiles, stats


def heuristic_profiles(user_ids: Sequence[str], events: pd.DataFrame, dataset: Dataset,
                       k: int, attrs: AttributeVocab | None = None) -> list[InterestProfile]:
    """Profiles without the LLM: each user's k most frequent attribute tags (`llmrec.tags.history_tags`)."""
    index = dataset.item_index
    attrs = attrs or vocabulary_of(dataset)
    wanted = set(user_ids)
    out = []
    for user, group in events[events["user_id"].isin(wanted)].groupby("user_id", sort=True):
        tags = history_tags([index[i] for i in group["item_id"]], k, attrs)
        out.append(InterestProfile(user_id=str(user), interests=tuple(Interest(name=t) for t in tags[:5]),
                                   tags=tuple(Tag(text=t, interest=t) for t in tags), source="heuristic",
                                   model="history_tags"))
    return out


def explain_all(facts: Sequence[ExplainFacts], dataset: Dataset, out: Path, config: RecommenderConfig,
                backend: LLMBackend | None, executor: str = "local",
                adapter: str | None = None) -> tuple[ExplanationTable, ExplainStats]:
    """Explanations for the served facts (`Recommender.served_facts`), as a resumable sharded job keyed by
    (interest, item, evidence ids), with the summed generation stats of every shard (finished ones included)."""
    items = dataset.item_index
    keys = sorted({pair_key(f) for f in facts})
    meta = {"stage": "explain", "explain": config.explain.model_dump(mode="json"), "adapter": adapter,
            "prompt_hashes": prompt_hashes([EXPLAIN_PROMPT])}
    result = _run_llm_job(keys, lambda llm: make_explain_process(items, llm, config.explain, dataset.domain,
                                                                 adapter=adapter),
                          out, config, backend, executor, meta, key_column="pair_key")
    frame = read_shards(result.out_dir)
    stats = sum_shard_stats(frame, ExplainStats, keep=5)
    return ExplanationTable(explanations_from_frame(frame, str(result.out_dir))), stats


def imagine_segments(dataset: Dataset, split: Split, config: RecommenderConfig, backend: LLMBackend,
                     cache: Path, adapter: str | None = None) -> tuple[dict[str, list[str]], dict]:
    """Imagined early histories per profile segment (occupation, gender, age decade), matched to the catalogue."""
    profiles = {str(u): dataset.profile(str(u)) for u in dataset.users["user_id"]}
    segments: dict[str, dict[str, str]] = {}
    for profile in profiles.values():
        segments.setdefault(profile_segment(profile), profile)
    items = dataset.item_index
    encoder = TextEncoder(config.towers.encoder, config.towers.cache_dir, config.towers.encoder_batch_size)

    def encode(texts: Sequence[str]) -> np.ndarray:
        vecs = encoder.encode(list(texts))
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    catalogue = Catalogue(list(items.values()), encode)
    pool = ExamplePool.from_events(split.train, profiles, items, config.coldstart.example_items)
    users = [(f"segment:{seg}", {k: v for k, v in p.items() if k in ("age", "gender", "occupation")}, [])
             for seg, p in sorted(segments.items())]
    imagined, stats = imagine_histories(users, backend, config.coldstart, catalogue, pool, cache_path=cache,
                                        adapter=adapter, attrs=vocabulary_of(dataset, config.vocab),
                                        behaviors=dataset.behavior_vocab)
    out = {h.user_id.removeprefix("segment:"): [i.item_id for i in h.items if i.item_id is not None] for h in imagined}
    return {k: v for k, v in out.items() if v}, stats.to_dict()


def _started(stack: ExitStack, llm: LLMConfig) -> LLMBackend:
    """A backend for `llm`, closed when `stack` unwinds."""
    made = make_backend(llm)
    stack.callback(made.close)
    return made


def build_recommender(dataset: Dataset, out: str | Path, config: RecommenderConfig | None = None, *,
                      executor: str = "local", adapter: str | None = None, mine_users: int | None = None,
                      explain_users: int | None = 100, k: int = 10,
                      backend: LLMBackend | None = None) -> Recommender:
    """Run every batch stage and write the recommender folder `out` (resumable: rerun after a kill).

    `mine_users` limits LLM mining to the first N users (by id) on small machines; every other user gets a
    heuristic profile (`source="heuristic"`, their most frequent attribute tags), counted in the report.
    `backend` (local executor only) replaces the one `config.llm` would build, e.g. a FakeBackend in tests;
    the caller keeps ownership of it. Each stage logs one INFO line ("[1/5] narratives: ...").
    """
    config = config or RecommenderConfig()
    attrs = vocabulary_of(dataset, config.vocab)
    out = Path(out)
    work = out / "work"
    timings: dict[str, float] = {}
    t = time.perf_counter()
    split = split_leave_one_out(dataset.events, config.data.min_events_for_split,
                                targets=dataset.behavior_vocab.target_names())
    as_of = split.as_of("test")
    # The mining prompt's budget (MiningConfig.narrative_tokens): prefill is half the cost of mining on CPU.
    narratives = render_narratives(split.history("test"), dataset.items, as_of,
                                   config.narrative.model_copy(update={"max_tokens": config.mining.narrative_tokens}),
                                   load_narrative_tokenizer(config.llm.model), behaviors=dataset.behavior_vocab,
                                   queries=dataset.queries)
    timings["narratives"] = time.perf_counter() - t
    log.info("[1/5] narratives: %d users in %.1fs", len(narratives), timings["narratives"])

    if backend is not None and executor != "local":
        raise ValueError("an explicit backend needs executor='local' (Ray actors build their own)")
    with ExitStack() as engines:
        t = time.perf_counter()
        profiles, mining = _mine_profiles(narratives, dataset, split, work / "interests", config, backend, executor,
                                          adapter, mine_users, attrs)
        timings["mine"] = time.perf_counter() - t
        n_llm = sum(p.source == "llm" for p in profiles)
        n_heur = sum(p.source == "heuristic" for p in profiles)
        log.info(f"[2/5] interests/tags: {len(profiles)} users ({n_llm} valid LLM, "
                 f"{len(profiles) - n_llm - n_heur} flagged fallback, {n_heur} heuristic, not mined; "
                 f"JSON validity {mining.to_dict()['json_valid_rate']}, {mining.evidence_summary()}) "
                 f"in {timings['mine']:.0f}s")

        t = time.perf_counter()
        llm_tags = {p.user_id: [tag.text for tag in p.tags] for p in profiles}
        # The tags mix validated LLM answers, flagged fallbacks and unmined heuristic users: say how much of each.
        tags_info = {"source": "profiles", **source_shares(p.source for p in profiles)}
        result = train_towers(dataset, split, config.towers, llm_tags=llm_tags, tags_info=tags_info,
                              attrs=attrs)
        timings["towers"] = time.perf_counter() - t
        log.info("[3/5] three towers: beta=%s, test NDCG@10=%.4f in %.0fs", result.report["beta"],
                 result.report["test"]["ndcg@10"], timings["towers"])

        manifest = {**build_manifest(split, config.towers, result.report, tags_info),
                    "prompt_hashes": prompt_hashes(PROMPTS), "adapter": adapter, "llm": config.llm.model_dump(mode="json"),
                    "llmrec_version": package_version("llmrec")}
        rec = Recommender(config, dataset, result.model, profiles, manifest=manifest, attrs=attrs)

        # The adapter is tuned on the mining prompt only: explanations and imagined histories use the base model.
        base = backend if backend is not None else (_started(engines, config.llm) if executor == "local" else None)
        t = time.perf_counter()
        users = sorted(as_of.index, key=lambda u: (len(u), u))[:explain_users] if explain_users else list(as_of.index)
        served = [facts for u in users for _, facts in rec.served_facts(u, k)]
        rec.explanations, explain_stats = explain_all(served, dataset, work / "explanations", config, base, executor)
        timings["explain"] = time.perf_counter() - t
        log.info(f"[4/5] explanations: {len(rec.explanations)} distinct facts for {len(users)} users; grounded at the first try "
                 f"{explain_stats.faithful_share:.1%}, LLM text kept {explain_stats.llm_final}, flagged templates "
                 f"{explain_stats.templated}; in {timings['explain']:.0f}s")

        t = time.perf_counter()
        # Imagined histories are one small in-process call (no shards), whatever the executor.
        rec.imagined, cold_stats = imagine_segments(dataset, split, config, base or _started(engines, config.llm),
                                                    work / "coldstart.json")
        timings["coldstart"] = time.perf_counter() - t
        log.info("[5/5] cold start: %d profile segments imagined in %.0fs", len(rec.imagined), timings["coldstart"])
    rec.manifest.update(timings_s={k: round(v, 1) for k, v in timings.items()}, split_hash=split.hash,
                        tower_report={k: v for k, v in result.report.items() if k != "history"},
                        coldstart=cold_stats, mining={k: v for k, v in mining.to_dict().items() if k != "errors"},
                        explain=explain_stats.to_dict())
    rec.save_pretrained(out)
    (out / "build_report.json").write_text(json.dumps(rec.manifest, indent=2, default=str) + "\n")
    return rec


def _mine_profiles(narratives, dataset: Dataset, split: Split, work: Path, config: RecommenderConfig,
                   backend: LLMBackend | None, executor: str, adapter: str | None, mine_users: int | None,
                   attrs) -> tuple[list[InterestProfile], MiningStats]:
    """Mine the first `mine_users` users (by id) with the LLM; the others get counted heuristic profiles.

    One adapter for the whole mining job is served merged into the weights (base decoding speed, no LoRA
    engine) on its own engine, closed before the caller starts the base engine. An explicit backend (tests,
    a shared server) gets the adapter per request instead.
    """
    owned = backend is None
    mine_config, mine_adapter, label = config, adapter, None
    if adapter is not None and owned:
        merged = merged_model(config.llm.model, adapter)
        mine_config = config.model_copy(update={"llm": config.llm.model_copy(
            update={"model": str(merged), "enable_lora": False})})
        mine_adapter, label = None, f"{config.llm.backend}+{adapter}"
    ordered = sorted(narratives, key=lambda n: (len(n.user_id), n.user_id))
    chosen = ordered[:mine_users] if mine_users else ordered
    with ExitStack() as mining_engine:  # freed before the base engine starts
        mine_backend = _started(mining_engine, mine_config.llm) if owned and executor == "local" else backend
        profiles, mining = mine_all(chosen, dataset, work, mine_config, mine_backend, executor, mine_adapter, label,
                                    attrs)
    profiles += heuristic_profiles([n.user_id for n in ordered[len(chosen):]], split.history("test"), dataset,
                                   config.mining.max_tags, attrs)
    return profiles, mining


__all__ = ["build_recommender", "mine_all", "explain_all", "imagine_segments"]
