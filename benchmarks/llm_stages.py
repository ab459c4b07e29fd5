"""The LLM stages on held-out users (benchmark "llm_stages"): base vs LoRA vs tag heuristics and sanity rows,
and the vLLM path vs the transformers path over a batch-size sweep.

Users: the adapter's validation users (`manifest.json` "valid_users": their events never trained it), first
--users of them by id, with their test target as the next item. Every method sees the SAME events: those
strictly before the test target's timestamp (`visible_events`), which is what the narrative renders (with the
adapter's narrative budget, prompts and MiningConfig from its manifest, so base and LoRA see the very same
prompts) and what the heuristics count.

Rows: "base" (packaged SmolLM2, vLLM, schema-guided) and "lora" (the adapter merged into the base weights,
`llmrec.llm.model.merged_model`, as the batch job serves it); heuristics "history_tags" (the user's most
frequent past item tags, `llmrec.tags.history_tags`); sanity rows that must score low: "popular_tags" (one
constant list, the most frequent tags over everyone's visible history), "single_tag" (its first tag alone),
"random_tags" (tags drawn from the catalogue's item tags, seeded by --seed).

Tag metrics (`llmrec.eval.tag_metrics`; every row judged on its first 10 tags, the models' maximum):
- tag_ndcg (k=10), tag_hr (k=50): the tags alone rank the whole catalogue (an item scores the number of tags
  it matches, pessimistic ties, seen items excluded); the next item's NDCG@10 and HR@50.
- specificity_hit (k=10): the best hit's -ln(share of catalogue items the tag matches), nats, mean over users.
- novel_hit (k=10): share of users with a hit whose attribute combination no visible history item carries.
- legacy_tag_hr (k=10): RecGPT's tag HR@k. LEGACY: a constant list of broad tags scores ~0.98 on it.
- tower_ndcg (k=10), tower_hr (k=50), with --towers (a `llmrec train-retriever` folder): the same retrieval
  through that model's trained tag tower (`ThreeTowerModel.tag_scores`) instead of exact attribute matching.
LLM rows also report each of these over the users the model itself served (subset "llm_only", n_llm).

Mining metrics (records: benchmark, metric, value, unit, model, path, k, n):
- valid_first_try, json_valid_rate, valid_final; llm_share (users served by a validated LLM answer) and
  fallback_share (users given the flagged history-tag stand-in); fallback_rate = fallback_share.
- grounding_exists: share of cited evidence lines that are lines of the narrative (the old "grounding");
  grounded: share whose item carries an attribute the interest or its tags name, or whose title the interest
  names (`llmrec.eval.grounding`). Both only for answers that cite lines (format 4); answers that cite none
  (format 5, the default) get evidence_attributed_per_interest instead (`evidence_records`).
- output_tokens_per_s, users_per_min: wall clock, whole mining (retries included).

Speed (slice "speed"): the LoRA model on the first --throughput-users users, SAME prompts, through vLLM and
transformers at batch sizes 16, 64 and 256 (prompts per call; for transformers also per forward), each path
warmed on one batch first. vllm_speedup (output tokens/s ratio) is recorded best-vs-best (compare
"best_vs_best": each path at its best batch size) and per batch size (compare "same_batch").

Records are rewritten after every stage, so a run cut short keeps what it measured.

    python benchmarks/llm_stages.py --adapter adapters/ml-100k-lora [--users 64] [--throughput-users 256]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from llmrec.bench import record, write_records
from llmrec.config import LLMConfig, MiningConfig, NarrativeConfig
from llmrec.data import ItemVocab, resolve_dataset
from llmrec.data.split import Split, events_before, split_leave_one_out
from llmrec.eval.tag_metrics import TagCatalogue, source_shares, tag_metrics
from llmrec.interests import MiningStats, mine_interests
from llmrec.llm.model import load_tokenizer
from llmrec.narrative import render_narratives
from llmrec.schema import InterestProfile, Item
from llmrec.tags import (
    history_tags,
    item_attributes,
    item_tags,
    popular_tags,
    tag_attributes,
)

BENCH = "llm_stages"
K = 10  # tags judged per user (MiningConfig.max_tags by default)
BATCH_SIZES = (16, 64, 256)
_METRIC = re.compile(r"^(.*)@(\d+)$")


def held_out_users(adapter: Path, candidates: set[str], n: int) -> list[str]:
    """The adapter's validation users that have a test target, first n by id."""
    manifest = json.loads((adapter / "manifest.json").read_text())
    users = sorted((u for u in manifest["valid_users"] if u in candidates), key=lambda u: (len(u), u))
    if not users:
        raise ValueError(f"{adapter}/manifest.json lists no validation user with a test target")
    return users[:n]


def visible_events(split: Split) -> pd.DataFrame:
    """The events every method may see for the test target: strictly before its timestamp (as the narrative)."""
    return events_before(split.history("test"), split.as_of("test"))


class TagSetup(NamedTuple):
    """What every tag row of `users` is scored against: the catalogue (items in vocabulary order), the users'
    test items as targets, and the visible items each user has seen (excluded from the ranking). A NamedTuple:
    tests load this file by path, outside sys.modules, where a dataclass cannot resolve its annotations."""

    vocab: ItemVocab
    catalogue_items: list[Item]
    catalogue: TagCatalogue
    targets: list[int]
    by_user: dict[str, list[str]]
    seen: list[np.ndarray]


def tag_setup(ds, split: Split, visible: pd.DataFrame, users: Sequence[str]) -> TagSetup:
    vocab = ItemVocab.from_items(ds.items)
    catalogue_items = [ds.item_index[i] for i in vocab.ids]
    by_user = {u: g["item_id"].tolist() for u, g in visible.groupby("user_id")}
    return TagSetup(
        vocab=vocab, catalogue_items=catalogue_items,
        catalogue=TagCatalogue.build(catalogue_items, item_attributes, tag_attributes),
        targets=[int(t) for t in vocab.encode(split.test.set_index("user_id").loc[users, "item_id"])],
        by_user=by_user, seen=[vocab.encode(by_user.get(u, [])) for u in users])


def heuristic_rows(seen: Mapping[str, Sequence[Item]], users: Sequence[str], catalogue: Sequence[Item], k: int,
                   seed: int) -> dict[str, list[list[str]]]:
    """Tag lists per row for `users`: history_tags and the sanity rows, all from the same visible items."""
    popular = popular_tags(seen.values(), k)
    pool = sorted({t for it in catalogue for t in item_tags(it)})
    rng = random.Random(seed)
    return {
        "history_tags": [history_tags(seen.get(u, []), k) for u in users],
        "popular_tags": [popular] * len(users),
        "single_tag": [popular[:1]] * len(users),
        "random_tags": [rng.sample(pool, min(k, len(pool))) for _ in users],
    }


Tower = Callable[[Sequence[Sequence[str]]], np.ndarray]  # tag lists -> [B, V] item scores


def load_tag_tower(path: str | Path, vocab: ItemVocab) -> Tower:
    """The tag tower of a trained three-tower folder as a scoring callable; its item order must be ours."""
    from retrieval.towers import ThreeTowerModel

    model = ThreeTowerModel.from_pretrained(path)
    if model.vocab.ids != vocab.ids:
        raise ValueError(f"{path}: the model's item vocabulary differs from this dataset's items table")
    items = model.item_vectors()  # [V, d]
    return lambda lists: model.tag_scores(lists, items)


def tag_records(lists: Sequence[Sequence[str]], targets: Sequence[int], seen: Sequence[np.ndarray],
                catalogue: TagCatalogue, tower: Tower | None = None, **ctx) -> list[dict]:
    """One record per tag metric (`llmrec.eval.tag_metrics.tag_metrics`), its cut-off as k."""
    out = []
    for name, value in tag_metrics(lists, targets, seen, catalogue, k=K, tower=tower).items():
        metric, k = _METRIC.match(name).groups()
        out.append(record(BENCH, metric, value, "nats" if metric == "specificity_hit" else "fraction", k=int(k),
                          **ctx))
    return out


def evidence_records(bench: str, stats: Mapping, ctx: Mapping) -> list[dict]:
    """Grounding rates of cited lines (answer format 4), or, for answers that cite none (format 5), the evidence
    items attributed per LLM-mined interest (grounded by construction, so no rate is reported for them).
    `stats`: `MiningStats.to_dict()`."""
    if stats.get("evidence_cited"):
        cited = {"cited": stats["evidence_cited"]}
        return [record(bench, "grounding_exists", stats["grounding_exists"], "fraction", **cited, **ctx),
                record(bench, "grounded", stats["grounded"], "fraction", **cited, **ctx)]
    return [record(bench, "evidence_attributed_per_interest", stats["evidence_attributed_per_interest"], "items",
                   **ctx)]


def score_llm(model: str, profiles: Sequence[InterestProfile], stats: MiningStats, targets: Sequence[int],
              seen: Sequence[np.ndarray], catalogue: TagCatalogue, path: str, tower: Tower | None = None
              ) -> list[dict]:
    n = len(profiles)
    ctx = {"model": model, "path": path, "n": n}
    shares = source_shares(p.source for p in profiles)
    recs = [
        record(BENCH, "valid_first_try", stats.valid_first / n, "fraction", **ctx),
        record(BENCH, "json_valid_rate", stats.answers_valid / max(stats.answers, 1), "fraction", **ctx),
        record(BENCH, "valid_final", stats.valid_rate, "fraction", **ctx),
        record(BENCH, "llm_share", shares["llm_share"], "fraction", **ctx),
        record(BENCH, "fallback_share", shares["fallback_share"], "fraction", **ctx),
        record(BENCH, "fallback_rate", shares["fallback_share"], "fraction", **ctx),
        record(BENCH, "output_tokens_per_s", stats.output_tokens / stats.seconds, "tokens/s", **ctx),
        record(BENCH, "users_per_min", 60 * n / stats.seconds, "users/min", **ctx),
        record(BENCH, "tags_per_user", stats.tags_kept / max(n - stats.fallback, 1), "tags", **ctx),
        record(BENCH, "prompt_tokens_per_user", stats.prompt_tokens / max(stats.answers, 1), "tokens", **ctx),
        record(BENCH, "output_tokens_per_user", stats.output_tokens / max(stats.answers, 1), "tokens", **ctx),
    ] + evidence_records(BENCH, stats.to_dict(), ctx)
    tags = [[t.text for t in p.tags] for p in profiles]
    recs += tag_records(tags, targets, seen, catalogue, tower, **ctx)
    # The same over the users whose tags the model itself produced (fallbacks are history tags).
    own = [i for i, p in enumerate(profiles) if p.source == "llm"]
    if own:
        recs += tag_records([tags[i] for i in own], [targets[i] for i in own], [seen[i] for i in own], catalogue,
                            tower, subset="llm_only", n_llm=len(own), **ctx)
    return recs


def timed_mining(backend, narratives, mining, name, items, log) -> tuple[list, MiningStats]:
    t = time.perf_counter()
    profiles, stats = mine_interests(narratives, backend, mining, items=items, label=f"{backend.name}+{name}")
    log(f"  {backend.name} {name} batch {mining.batch_size}: {len(narratives)} users in "
        f"{time.perf_counter() - t:.0f}s, {stats.output_tokens} output tokens, valid_final {stats.valid_rate:.2f}, "
        f"grounding exists {stats.grounding:.2f} / grounded {stats.grounded:.2f}")
    return profiles, stats


def speed_ratios(tokens_per_s: Mapping[tuple[str, int], float]) -> list[dict]:
    """vllm_speedup records from {(path, batch_size): output tokens/s}: best-vs-best and per shared batch size."""
    best = {p: max(v for (q, _), v in tokens_per_s.items() if q == p) for p in ("vllm", "transformers")}
    recs = [record(BENCH, "vllm_speedup", best["vllm"] / best["transformers"], "x", model="lora", slice="speed",
                   compare="best_vs_best")]
    for b in sorted({b for _, b in tokens_per_s}):
        if ("vllm", b) in tokens_per_s and ("transformers", b) in tokens_per_s:
            recs.append(record(BENCH, "vllm_speedup", tokens_per_s["vllm", b] / tokens_per_s["transformers", b], "x",
                               model="lora", slice="speed", compare="same_batch", batch_size=b))
    return recs


def speed_sweep(served: str, narratives: Sequence, mining: MiningConfig, items: Mapping[str, Item],
                log: Callable[[str], None], save: Callable[[list[dict]], None]) -> list[dict]:
    """Output tokens/s and users/min of both paths at every batch size (same prompts), then the ratios."""
    from llmrec.llm import make_backend

    recs: list[dict] = []
    rate: dict[tuple[str, int], float] = {}
    warm = narratives[: min(BATCH_SIZES)]
    for path in ("vllm", "transformers"):
        backend = None
        try:
            for b in BATCH_SIZES:
                if backend is None or path == "transformers":  # transformers batches per forward: one per size
                    if backend is not None:
                        backend.close()
                    backend = make_backend(LLMConfig(model=served, backend=path, enable_lora=False, batch_size=b))
                    mine_interests(warm, backend, mining.model_copy(update={"batch_size": b}))  # warm-up, untimed
                _, stats = timed_mining(backend, narratives, mining.model_copy(update={"batch_size": b}), "lora",
                                        items, log)
                rate[path, b] = stats.output_tokens / stats.seconds
                ctx = {"model": "lora", "path": path, "n": len(narratives), "slice": "speed", "batch_size": b}
                recs += [record(BENCH, "output_tokens_per_s", rate[path, b], "tokens/s", **ctx),
                         record(BENCH, "users_per_min", 60 * len(narratives) / stats.seconds, "users/min", **ctx)]
                save(recs)
        finally:
            if backend is not None:
                backend.close()
    return recs + speed_ratios(rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="LoRA adapter folder from `llmrec finetune`.")
    parser.add_argument("--dataset", default="ml-100k", help="Built-in name or dataset folder (as for finetune).")
    parser.add_argument("--model", default=None, help="Base model folder (default: packaged SmolLM2).")
    parser.add_argument("--users", type=int, default=64, help="Held-out users scored (first N by id).")
    parser.add_argument("--throughput-users", type=int, default=256,
                        help="Users run through both the vLLM and the transformers path at every batch size.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random_tags sanity row.")
    parser.add_argument("--towers", default=None, help="Trained three-tower folder: also score its tag tower.")
    parser.add_argument("--out", default=None, help="JSON path; default reports/bench/llm_stages.json.")
    args = parser.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731
    adapter = Path(args.adapter).resolve()
    manifest = json.loads((adapter / "manifest.json").read_text())
    mining = MiningConfig(**manifest["mining_config"])
    ncfg = NarrativeConfig(**manifest["narrative_config"])

    ds = resolve_dataset(args.dataset)
    split = split_leave_one_out(ds.events)
    if manifest.get("split_hash") not in (None, split.hash):
        log(f"warning: adapter split hash {manifest['split_hash']} != this split {split.hash}")
    from llmrec.interests import PROMPTS
    from llmrec.llm.prompts import prompt_hashes

    changed = [k for k, v in prompt_hashes(PROMPTS).items() if manifest.get("prompt_hashes", {}).get(k) != v]
    if changed:  # the adapter learnt other prompt texts: its figures understate a retrained adapter
        log(f"warning: prompts {changed} changed since the adapter was trained; retrain it with `llmrec finetune`")
    visible = visible_events(split)  # what the narrative AND the heuristics see
    as_of = split.as_of("test")
    users = held_out_users(adapter, set(as_of.index), args.users)
    t = tag_setup(ds, split, visible, users)
    vocab, catalogue_items, catalogue, targets, by_user, seen = (t.vocab, t.catalogue_items, t.catalogue, t.targets,
                                                                 t.by_user, t.seen)
    tower = load_tag_tower(args.towers, vocab) if args.towers else None
    narratives = render_narratives(visible[visible["user_id"].isin(set(users))], ds.items, as_of.loc[users], ncfg,
                                   load_tokenizer(args.model), behaviors=ds.behavior_vocab, queries=ds.queries)
    log(f"{len(users)} held-out users; narrative budget {ncfg.max_tokens}; adapter {adapter}")

    records: list[dict] = []
    seen_items = {u: [ds.item_index[i] for i in ids] for u, ids in by_user.items()}
    for name, lists in heuristic_rows(seen_items, users, catalogue_items, K, args.seed).items():
        records += tag_records(lists, targets, seen, catalogue, tower, model=name, path="none", n=len(users))

    from llmrec.llm import make_backend
    from llmrec.llm.model import merged_model

    def save(extra: Sequence[dict] = ()) -> Path:  # after every stage: a run cut short still leaves its figures
        return write_records(records + list(extra), BENCH, args.out)

    save()
    merged = str(merged_model(args.model, adapter))
    for name, served in (("lora", merged), ("base", args.model)):
        vllm = make_backend(LLMConfig(model=served, backend="vllm", enable_lora=False))
        try:
            profiles, stats = timed_mining(vllm, narratives, mining, name, ds.item_index, log)
            records += score_llm(name, profiles, stats, targets, seen, catalogue, "vllm", tower)
        finally:
            vllm.close()
        save()
    tp_users = min(args.throughput_users, len(users))
    records += speed_sweep(merged, narratives[:tp_users], mining, ds.item_index, log, save)
    path = save()
    print_table(records)
    log(f"wrote {path}")


def print_table(records: list[dict]) -> None:
    rows: dict[tuple, dict] = {}
    for r in records:
        if r.get("slice") == "speed":
            continue
        key = (r.get("subset", "all"), r["model"], r.get("path", ""), r.get("n_llm", r["n"]))
        col = r["metric"] + (f"@{r['k']}" if "k" in r else "")
        rows.setdefault(key, {})[col] = r["value"]
    cols = ["llm_share", "valid_first_try", "tag_ndcg@10", "tag_hr@50", "tower_ndcg@10", "tower_hr@50",
            "specificity_hit@10", "novel_hit@10", "legacy_tag_hr@10", "grounding_exists", "grounded",
            "output_tokens_per_s"]
    short = ["llm", "valid_1st", "NDCG@10", "HR@50", "twNDCG@10", "twHR@50", "spec@10", "novel@10", "legHR@10",
             "exists", "grounded", "tok/s"]
    print(f"{'subset':<9}{'model':<14}{'path':<13}{'n':>4}" + "".join(f"{c:>10}" for c in short))
    for (subset, model, path, n), row in rows.items():
        cells = "".join(f"{row[c]:>10.3f}" if c in row else f"{'-':>10}" for c in cols)
        print(f"{subset:<9}{model:<14}{path:<13}{n:>4}" + cells)
    speed = [r for r in records if r.get("slice") == "speed"]
    for r in speed:
        where = r.get("path", r.get("compare", ""))
        batch = r.get("batch_size", "-")
        print(f"speed {r['metric']:<20} {where:<13} batch {batch!s:>4}: {r['value']:.2f} {r['unit']}")


if __name__ == "__main__":
    main()
