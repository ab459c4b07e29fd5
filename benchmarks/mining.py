"""Mining every user with the default adapter (benchmark "mining"): wall-clock time of `llmrec mine-interests`,
answer validity and the tag metrics of what it mined.

The command runs as a user runs it (a child process: adapter merged, engine started, narratives rendered, every
user mined in resumable shards, profiles written), so `seconds` is the whole command and `mining_seconds` the
generation part only (MiningStats.seconds: engine start and adapter merge excluded). The adapter is built first
with `llmrec finetune` when it is missing (its time is recorded as `finetune_seconds`, not part of `seconds`).

Tag metrics (`llmrec.eval.tag_metrics`, as in benchmarks/llm_stages.py): every mined user's tags against their
test item, seen items excluded, beside the history_tags heuristic and the sanity rows (constant popular list,
single tag, random tags) on the same users and the same visible events, so the figures can be read against
rows that must score low. Records (benchmark, metric, value, unit, model, n): seconds (key users),
mining_seconds, merge_seconds (part of seconds; 0 once the merge is cached), users_per_min, valid_first_try,
valid_final, json_valid_rate, llm_share, fallback_share, prompt_tokens_per_user, output_tokens_per_user,
output_tokens_per_s, grounding_exists/grounded (answers that cite lines) or evidence_attributed_per_interest
(answers that cite none), then tag_ndcg/tag_hr/specificity_hit/novel_hit/legacy_tag_hr per row.

    python benchmarks/mining.py [--adapter adapters/ml-100k-lora] [--dataset ml-100k] [--users N]
                                [--shard-size 256] [--config CONFIG.json] [--out reports/bench/mining.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as `python benchmarks/mining.py`: the repo root (not benchmarks/, whose retrieval.py would shadow the
# `retrieval` package) goes on sys.path, so the sibling benchmark's helpers import as benchmarks.llm_stages.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import pyarrow.parquet as pq  # noqa: E402

from benchmarks.llm_stages import (  # noqa: E402
    K,
    evidence_records,
    heuristic_rows,
    tag_records,
    tag_setup,
    visible_events,
)
from llmrec.bench import record, write_records  # noqa: E402
from llmrec.data import resolve_dataset  # noqa: E402
from llmrec.data.split import split_leave_one_out  # noqa: E402
from llmrec.interests import profiles_from_table  # noqa: E402

BENCH = "mining"
LLMREC = [sys.executable, "-m", "llmrec"]


def ensure_adapter(adapter: Path, dataset: str, log) -> float | None:
    """Build the default adapter with `llmrec finetune` when it is missing; its wall time, or None if it existed."""
    if (adapter / "adapter_config.json").exists():
        return None
    log(f"{adapter} missing: building it with `llmrec finetune` (~20 min on 2 cores)")
    t = time.perf_counter()
    subprocess.run([*LLMREC, "finetune", "--dataset", dataset, "--out", str(adapter)], check=True)
    return time.perf_counter() - t


def run_mining(adapter: Path, dataset: str, out: Path, users: int | None, shard_size: int | None,
               config: str | None = None) -> float:
    """`llmrec mine-interests` in a child process over a fresh output folder; its wall time in seconds."""
    cmd = [*LLMREC, "mine-interests", "--dataset", dataset, "--out", str(out), "--adapter", str(adapter)]
    cmd += ["--config", config] if config else []
    cmd += ["--users", str(users)] if users else []
    cmd += ["--shard-size", str(shard_size)] if shard_size else []
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def mining_records(stats: dict, seconds: float, n: int, ctx: dict) -> list[dict]:
    answers = max(stats["answers"], 1)
    return [
        record(BENCH, "seconds", seconds, "s", users=n, **ctx),
        record(BENCH, "mining_seconds", stats["seconds"], "s", users=n, **ctx),
        record(BENCH, "users_per_min", 60 * n / seconds, "users/min", **ctx),
        record(BENCH, "valid_first_try", stats["valid_first"] / n, "fraction", **ctx),
        record(BENCH, "valid_final", (stats["valid_first"] + stats["valid_retry"]) / n, "fraction", **ctx),
        record(BENCH, "json_valid_rate", stats["answers_valid"] / answers, "fraction", **ctx),
        record(BENCH, "llm_share", (stats["valid_first"] + stats["valid_retry"]) / n, "fraction", **ctx),
        record(BENCH, "fallback_share", stats["fallback"] / n, "fraction", **ctx),
        record(BENCH, "retries", stats["answers"] - n, "answers", **ctx),
        record(BENCH, "prompt_tokens_per_user", stats["prompt_tokens"] / answers, "tokens", **ctx),
        record(BENCH, "output_tokens_per_user", stats["output_tokens"] / answers, "tokens", **ctx),
        record(BENCH, "output_tokens_per_s", stats["output_tokens"] / stats["seconds"], "tokens/s", **ctx),
    ] + evidence_records(BENCH, stats, ctx)


def tag_rows(dataset: str, profiles_path: Path, seed: int) -> list[dict]:
    """Tag metrics of the mined tags and of the heuristic and sanity rows, on the mined users' test items."""
    ds = resolve_dataset(dataset)
    split = split_leave_one_out(ds.events)
    profiles = profiles_from_table(pq.read_table(profiles_path))
    users = [p.user_id for p in profiles]
    t = tag_setup(ds, split, visible_events(split), users)
    catalogue, targets, seen = t.catalogue, t.targets, t.seen
    tags = [[t.text for t in p.tags] for p in profiles]
    recs = tag_records(tags, targets, seen, catalogue, model="lora", n=len(users))
    own = [i for i, p in enumerate(profiles) if p.source == "llm"]  # fallbacks are history tags: shown apart
    if own:
        recs += tag_records([tags[i] for i in own], [targets[i] for i in own], [seen[i] for i in own], catalogue,
                            model="lora", subset="llm_only", n=len(own))
    seen_items = {u: [ds.item_index[i] for i in ids] for u, ids in t.by_user.items()}
    for name, lists in heuristic_rows(seen_items, users, t.catalogue_items, K, seed).items():
        recs += tag_records(lists, targets, seen, catalogue, model=name, n=len(users))
    return recs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="adapters/ml-100k-lora", help="LoRA adapter (built when missing).")
    parser.add_argument("--dataset", default="ml-100k", help="Built-in name or dataset folder.")
    parser.add_argument("--users", type=int, default=None, help="Mine only the first N users (default: all).")
    parser.add_argument("--shard-size", type=int, default=None, help="Users per shard (default JobConfig's).")
    parser.add_argument("--config", default=None, help="RecommenderConfig JSON for mine-interests (e.g. llm.block_size).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random_tags sanity row.")
    parser.add_argument("--keep", default=None, help="Keep the mined folder here (default: a temp folder).")
    parser.add_argument("--out", default=None, help="JSON path; default reports/bench/mining.json.")
    args = parser.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    adapter = Path(args.adapter)
    finetune_s = ensure_adapter(adapter, args.dataset, log)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="llmrec-mining-"))
    if (work / "shards").exists():  # a resumed job would time only the unfinished shards
        shutil.rmtree(work / "shards")
    try:
        seconds = run_mining(adapter, args.dataset, work, args.users, args.shard_size, args.config)
        manifest = json.loads((work / "manifest.json").read_text())
        stats, n = manifest["stats"], manifest["n_users"]
        used = json.loads((work / "config.json").read_text())
        ctx = {"model": "lora", "adapter": str(adapter), "shard_size": used["jobs"]["shard_size"],
               "block_size": used["llm"].get("block_size"), "n": n}
        records = mining_records(stats, seconds, n, ctx)
        # part of `seconds`: merging the adapter into the weights, paid by a job's first run only (then cached)
        records.append(record(BENCH, "merge_seconds", manifest.get("merge_seconds", 0.0), "s", **ctx))
        if finetune_s is not None:
            records.append(record(BENCH, "finetune_seconds", finetune_s, "s", model="lora", adapter=str(adapter)))
        records += tag_rows(args.dataset, work / "profiles.parquet", args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    path = write_records(records, BENCH, args.out)
    for r in records:
        if r.get("subset") is None and r["metric"] in ("seconds", "valid_first_try", "valid_final", "tag_ndcg"):
            log(f"{r['model']:<14}{r['metric']:<16}{r['value']:.4f} {r['unit']}")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
