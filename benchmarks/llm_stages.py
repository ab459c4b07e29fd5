"""The LLM stages on held-out users (benchmark "llm_stages"): base vs LoRA vs two tag heuristics, and the
vLLM path vs the transformers path.

Users: the adapter's validation users (`manifest.json` "valid_users": their events never trained it), first
--users of them by id. Each user's narrative is rendered as of their TEST target from `Split.history("test")`
with the adapter's narrative budget, prompts and MiningConfig (from its manifest), so base and LoRA see the
very same prompts; the tag target is the user's next item (the test target).

Models: "base" (packaged SmolLM2, vLLM, schema-guided), "lora" (the adapter merged into the base weights,
`llmrec.llm.model.merged_model`, as the batch job serves it), "popular_tags" (the 30 most frequent item tags over
everyone's visible history) and "history_tags" (the user's 30 most frequent past item tags,
`llmrec.tags.history_tags`). The models answer with at most `MiningConfig.max_tags` tags (10 by default), so
their HR@30 equals their HR@10; the heuristics rank 30.

Metrics (records: benchmark, metric, value, unit, model, path, k, n):
- valid_first_try: share of answers that parsed against the wire schema and were usable on the first try;
  valid_final: share of users whose profile came from validated model output (after the one retry);
  fallback_rate = 1 - valid_final (flagged heuristic stood in).
- tag_hr (k=10, 30): RecGPT's tag HR@k against the next item (`llmrec.tags.tag_hit_rate`; the tag ->
  attribute mapping is in that module's docstring), over all users, fallbacks included; tag_hr_llm_only:
  the same over the users whose tags the model produced itself (n_llm of them).
- grounding: share of cited evidence line numbers that name a line of the user's narrative (so an item of
  their history before the target), `MiningStats.grounding`.
- output_tokens_per_s, users_per_min: wall-clock, whole mining (retries included). The "throughput" slice runs
  the LoRA model on the first --throughput-users users through BOTH paths (same merged model, same prompts,
  one process), and records vllm_speedup = vLLM tokens/s / transformers tokens/s.

Records are rewritten after every stage, so a run cut short keeps what it measured.

    python benchmarks/llm_stages.py --adapter adapters/ml-100k-lora [--users 64] [--throughput-users 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from llmrec.bench import record, write_records
from llmrec.config import LLMConfig, MiningConfig, NarrativeConfig
from llmrec.data import resolve_dataset
from llmrec.interests import MiningStats, mine_interests
from llmrec.llm.model import load_tokenizer
from llmrec.narrative import render_narratives
from llmrec.data.split import split_leave_one_out
from llmrec.tags import history_tags, popular_tags, tag_hit_rate

BENCH = "llm_stages"
KS = (10, 30)


def held_out_users(adapter: Path, candidates: set[str], n: int) -> list[str]:
    """The adapter's validation users that have a test target, first n by id."""
    manifest = json.loads((adapter / "manifest.json").read_text())
    users = sorted((u for u in manifest["valid_users"] if u in candidates), key=lambda u: (len(u), u))
    if not users:
        raise ValueError(f"{adapter}/manifest.json lists no validation user with a test target")
    return users[:n]


def score_llm(model: str, profiles, stats: MiningStats, next_items, path: str) -> list[dict]:
    n = len(profiles)
    ctx = {"model": model, "path": path, "n": n}
    recs = [
        record(BENCH, "valid_first_try", stats.valid_first / n, "fraction", **ctx),
        record(BENCH, "json_valid_rate", stats.answers_valid / max(stats.answers, 1), "fraction", **ctx),
        record(BENCH, "valid_final", stats.valid_rate, "fraction", **ctx),
        record(BENCH, "fallback_rate", 1.0 - stats.valid_rate, "fraction", **ctx),
        record(BENCH, "grounding", stats.grounding, "fraction", cited=stats.evidence_cited, **ctx),
        record(BENCH, "output_tokens_per_s", stats.output_tokens / stats.seconds, "tokens/s", **ctx),
        record(BENCH, "users_per_min", 60 * n / stats.seconds, "users/min", **ctx),
        record(BENCH, "tags_per_user", stats.tags_kept / max(n - stats.fallback, 1), "tags", **ctx),
        record(BENCH, "prompt_tokens_per_user", stats.prompt_tokens / max(stats.answers, 1), "tokens", **ctx),
        record(BENCH, "output_tokens_per_user", stats.output_tokens / max(stats.answers, 1), "tokens", **ctx),
    ]
    tags = [[t.text for t in p.tags] for p in profiles]
    recs += [record(BENCH, "tag_hr", tag_hit_rate(tags, next_items, k), "fraction", k=k, **ctx) for k in KS]
    # The same over the users whose tags the model itself produced (fallbacks use history tags).
    own = [i for i, p in enumerate(profiles) if p.source == "llm"]
    if own:
        recs += [record(BENCH, "tag_hr_llm_only", tag_hit_rate([tags[i] for i in own], [next_items[i] for i in own],
                                                               k), "fraction", k=k, n_llm=len(own), **ctx)
                 for k in KS]
    return recs


def score_heuristic(model: str, tags: list[list[str]], next_items) -> list[dict]:
    return [record(BENCH, "tag_hr", tag_hit_rate(tags, next_items, k), "fraction", k=k, model=model, path="none",
                   n=len(tags)) for k in KS]


def timed_mining(backend, narratives, mining, name, items, log) -> tuple[list, MiningStats]:
    t = time.perf_counter()
    profiles, stats = mine_interests(narratives, backend, mining, items=items, label=f"{backend.name}+{name}")
    log(f"  {backend.name} {name}: {len(narratives)} users in {time.perf_counter() - t:.0f}s, "
        f"{stats.output_tokens} output tokens, valid_final {stats.valid_rate:.2f}, grounding {stats.grounding:.2f}")
    return profiles, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="LoRA adapter folder from `llmrec finetune`.")
    parser.add_argument("--dataset", default="ml-100k", help="Built-in name or dataset folder (as for finetune).")
    parser.add_argument("--model", default=None, help="Base model folder (default: packaged SmolLM2).")
    parser.add_argument("--users", type=int, default=64, help="Held-out users scored (first N by id).")
    parser.add_argument("--throughput-users", type=int, default=64,
                        help="Users run through both the vLLM and the transformers path (LoRA model).")
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
    history = split.history("test")
    as_of = split.as_of("test")
    users = held_out_users(adapter, set(as_of.index), args.users)
    next_items = [ds.item_index[i] for i in split.test.set_index("user_id").loc[users, "item_id"]]
    narratives = render_narratives(history[history["user_id"].isin(set(users))], ds.items, as_of.loc[users], ncfg,
                                   load_tokenizer(args.model))
    log(f"{len(users)} held-out users; narrative budget {ncfg.max_tokens}; adapter {adapter}")

    records: list[dict] = []
    seen = {u: [ds.item_index[i] for i in g["item_id"]] for u, g in history.groupby("user_id")}
    k = max(KS)
    records += score_heuristic("popular_tags", [popular_tags(seen.values(), k)] * len(users), next_items)
    records += score_heuristic("history_tags", [history_tags(seen[u], k) for u in users], next_items)

    from llmrec.llm import make_backend

    def save() -> Path:  # after every stage: a run cut short by a timeout still leaves its figures
        return write_records(records, BENCH, args.out)

    save()
    # Throughput slice: the LoRA model on the first n_tp users through both paths (same prompts). When it
    # covers every held-out user, the held-out vLLM LoRA run is that measurement (not run twice).
    from llmrec.llm.model import merged_model

    merged = str(merged_model(args.model, adapter))
    n_tp = min(args.throughput_users, len(users))
    tp, tp_items = narratives[:n_tp], next_items[:n_tp]
    for name, served in (("lora", merged), ("base", args.model)):
        vllm = make_backend(LLMConfig(model=served, backend="vllm", enable_lora=False))
        try:
            profiles, stats = timed_mining(vllm, narratives, mining, name, ds.item_index, log)
            records += score_llm(name, profiles, stats, next_items, "vllm")
            if name == "lora":
                if n_tp < len(users):
                    profiles, stats = timed_mining(vllm, tp, mining, name, ds.item_index, log)
                stats_v = stats
                records += [dict(r, slice="throughput") for r in score_llm("lora", profiles[:n_tp], stats, tp_items,
                                                                            "vllm")]
        finally:
            vllm.close()
        save()
    hf = make_backend(LLMConfig(model=merged, backend="transformers"))
    try:
        profiles, stats_t = timed_mining(hf, tp, mining, "lora", ds.item_index, log)
        records += [dict(r, slice="throughput") for r in score_llm("lora", profiles, stats_t, tp_items, "transformers")]
    finally:
        hf.close()
    speedup = (stats_v.output_tokens / stats_v.seconds) / (stats_t.output_tokens / stats_t.seconds)
    records.append(record(BENCH, "vllm_speedup", speedup, "x", model="lora", slice="throughput", n=n_tp,
                          users_speedup=stats_t.seconds / stats_v.seconds))
    path = save()
    print_table(records)
    log(f"wrote {path}")


def print_table(records: list[dict]) -> None:
    rows: dict[tuple, dict] = {}
    for r in records:
        key = (r.get("slice", "held-out"), r["model"], r.get("path", ""), r["n"])
        col = r["metric"] + (f"@{r['k']}" if "k" in r else "")
        rows.setdefault(key, {})[col] = r["value"]
    cols = ["json_valid_rate", "valid_first_try", "valid_final", "tag_hr@10", "tag_hr@30",
            "tag_hr_llm_only@10", "grounding", "tags_per_user", "output_tokens_per_user", "output_tokens_per_s",
            "users_per_min", "vllm_speedup"]
    short = ["json", "valid_1st", "valid", "HR@10", "HR@30", "HRllm@10", "ground", "tags/u", "out/u", "tok/s",
             "users/min", "speedup"]
    print(f"{'slice':<11}{'model':<13}{'path':<13}{'n':>4}" + "".join(f"{c:>10}" for c in short))
    for (slice_, model, path, n), row in rows.items():
        cells = "".join(f"{row[c]:>10.3f}" if c in row else f"{'-':>10}" for c in cols)
        print(f"{slice_:<11}{model:<13}{path:<13}{n:>4}" + cells)


if __name__ == "__main__":
    main()
