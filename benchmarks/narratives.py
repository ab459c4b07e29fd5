"""Narrative throughput and budget fit (benchmark "narratives"): ML-100K and synthetic 37k-event users.

Slices: "ml-100k" (all 943 users, whole histories) and "synthetic-37k" (N users with 37,000 events each,
the RecGPT average, over a synthetic catalogue with clicks, views, likes, purchases and noise behaviours).
For each budget (512, 1024, 2048): users/s of `render_narratives` (first call "cold": item parts not yet
tokenized; then the median of --repeats "warm" calls), mean tokens and events per user, and the share of
users whose narrative fits, checked by re-tokenizing every text whole with the LLM's tokenizer (outside the
timed region). Records: metric users_per_s|users_per_cpu_s|tokens_per_user|events_per_user|
share_within_budget, context slice, budget, cache, n (users). users_per_cpu_s divides by this process's CPU
time, a fairer figure on a machine shared with other jobs.

    python benchmarks/narratives.py [--synthetic-users 20] [--repeats 3] [--out reports/bench/narratives.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from llmrec.bench import record, write_records
from llmrec.config import NarrativeConfig
from llmrec.data import load_ml100k
from llmrec.narrative import load_narrative_tokenizer, render_narratives, token_counter

BUDGETS = (512, 1024, 2048)
EVENTS_PER_USER = 37_000
WORDS = ("dark", "love", "city", "night", "river", "storm", "last", "secret", "house", "king", "star", "road",
         "winter", "blue", "game", "ghost", "wild", "little", "iron", "summer")
GENRES = ("Action", "Comedy", "Drama", "Sci-Fi", "Horror", "Romance", "Thriller", "Documentary", "Animation")
BEHAVIORS = ("clicked", "viewed", "watched", "liked", "purchased", "disliked", "impression")
BEHAVIOR_P = (0.55, 0.15, 0.15, 0.06, 0.02, 0.02, 0.05)  # "viewed", "impression": noise, dropped


def synthetic_dataset(n_users: int, n_items: int = 50_000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events (n_users * 37,000) and items tables in the canonical format; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, len(WORDS), size=(n_items, 3))
    items = pd.DataFrame({
        "item_id": [f"s{i}" for i in range(n_items)],
        "title": [" ".join(WORDS[w] for w in row).title() + f" {i}" for i, row in enumerate(words)],
        "genres": [list(rng.choice(GENRES, size=rng.integers(1, 4), replace=False)) for _ in range(n_items)],
        "year": pd.array(rng.integers(1950, 2024, n_items), dtype="Int32"),
        "text": None,
    })
    n = n_users * EVENTS_PER_USER
    as_of = pd.Timestamp("2024-06-01", tz="UTC").value // 10**9
    age_s = np.minimum(rng.exponential(200 * 86_400, n), 5 * 365 * 86_400).astype(np.int64)  # recent-heavy
    popular = np.minimum(rng.zipf(1.3, n), n_items) - 1  # repeat interactions with popular items
    events = pd.DataFrame({
        "user_id": np.repeat([f"synth{u:03d}" for u in range(n_users)], EVENTS_PER_USER),
        "item_id": items["item_id"].to_numpy()[(popular + rng.integers(0, n_items, n) * (rng.random(n) < 0.5))
                                              % n_items],
        "timestamp": pd.to_datetime(as_of - age_s, unit="s", utc=True).astype("datetime64[s, UTC]"),
        "behavior": np.array(BEHAVIORS)[rng.choice(len(BEHAVIORS), size=n, p=BEHAVIOR_P)],
        "value": np.nan,
    })
    return events, items


def measure(name: str, events: pd.DataFrame, items: pd.DataFrame, tokenizer, repeats: int) -> list[dict]:
    records = []
    counter = token_counter(tokenizer)
    for budget in BUDGETS:
        cfg = NarrativeConfig(max_tokens=budget)
        times, cpu = [], []
        for _ in range(repeats + 1):
            t, c = time.perf_counter(), time.process_time()
            out = render_narratives(events, items, None, cfg, tokenizer)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        n = len(out)
        exact = counter.encode_lengths([x.text for x in out])
        ctx = {"slice": name, "budget": budget, "n": n}
        records += [
            record("narratives", "users_per_s", n / times[0], "users/s", cache="cold", **ctx),
            record("narratives", "users_per_s", n / statistics.median(times[1:]), "users/s", cache="warm", **ctx),
            # CPU seconds of this process (all threads): less sensitive to other jobs on a shared machine.
            record("narratives", "users_per_cpu_s", n / statistics.median(cpu[1:]), "users/cpu-s", cache="warm",
                   **ctx),
            record("narratives", "tokens_per_user", float(np.mean([x.n_tokens for x in out])), "tokens", **ctx),
            record("narratives", "events_per_user", float(np.mean([x.n_events_in for x in out])), "events", **ctx),
            record("narratives", "share_within_budget", float(np.mean(exact <= budget)), "fraction", **ctx),
        ]
        if not (exact == np.array([x.n_tokens for x in out])).all():
            raise AssertionError(f"{name}/{budget}: reported token counts differ from whole-text tokenization")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-users", type=int, default=20, help="Synthetic users of 37,000 events each.")
    parser.add_argument("--repeats", type=int, default=3, help="Warm calls per cell (median reported).")
    parser.add_argument("--model", default=None, help="Model folder whose tokenizer counts (default SmolLM2).")
    parser.add_argument("--out", default=None, help="JSON path; default reports/bench/narratives.json.")
    args = parser.parse_args()

    tokenizer = load_narrative_tokenizer(args.model)
    ml = load_ml100k()
    records = measure("ml-100k", ml.events, ml.items, tokenizer, args.repeats)
    events, items = synthetic_dataset(args.synthetic_users)
    records += measure("synthetic-37k", events, items, tokenizer, args.repeats)
    path = write_records(records, "narratives", args.out)

    table = {}
    for r in records:
        key = (r["slice"], r["budget"])
        name = r["metric"] + (f"_{r['cache']}" if "cache" in r else "")
        table.setdefault(key, {})[name] = r["value"]
    cols = ["users_per_s_warm", "users_per_cpu_s_warm", "users_per_s_cold", "tokens_per_user", "events_per_user", "share_within_budget"]
    print(f"{'slice':<15}{'budget':>7}" + "".join(f"{c:>22}" for c in cols))
    for (slice_, budget), row in table.items():
        print(f"{slice_:<15}{budget:>7}" + "".join(f"{row[c]:>22.2f}" for c in cols))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
