"""Latency of `Recommender.recommend` (benchmark "api"): warm and cold users, 1 and 8 concurrent callers.

Reads a recommender folder built by `llmrec demo` (default artifacts/ml-100k). Warm users are known users
(requests by user_id); cold users are new users with 2 real events and a profile (history + profile).
Records: metric latency_p50_ms / latency_p99_ms / throughput_rps, slice warm|cold, key threads.

    python benchmarks/api.py [--artifacts artifacts/ml-100k] [--requests 400] [--out reports/bench/api.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

# benchmarks/retrieval.py would shadow the `retrieval` package when this folder is sys.path[0].
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from llmrec.bench import record, write_records
from llmrec.pipeline import Recommender


def time_calls(calls, threads: int) -> tuple[np.ndarray, float]:
    """Per-call latencies [n] in ms and the wall time of all calls with `threads` concurrent callers."""

    def timed(call):
        t = time.perf_counter()
        call()
        return (time.perf_counter() - t) * 1000.0

    t0 = time.perf_counter()
    if threads == 1:
        lat = [timed(c) for c in calls]
    else:
        with ThreadPoolExecutor(threads) as pool:
            lat = list(pool.map(timed, calls))
    return np.asarray(lat), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts/ml-100k", help="Recommender folder (llmrec demo).")
    parser.add_argument("--requests", type=int, default=400, help="Requests per (slice, threads) cell.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: concurrency comes from callers).")
    parser.add_argument("--out", default=None, help="JSON path; default reports/bench/api.json.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    rec = Recommender.load(args.artifacts)
    load_s = time.perf_counter() - t
    rng = np.random.default_rng(args.seed)
    users = sorted(rec._sequences)
    ids = list(rec.vocab.ids)
    profiles = [rec.dataset.profile(u) for u in users]
    warm = [lambda u=users[i]: rec.recommend(user_id=u, k=args.k) for i in rng.integers(0, len(users), args.requests)]
    cold = [lambda h=[ids[j] for j in rng.integers(0, len(ids), 2)], p=profiles[i]: rec.recommend(history=h, profile=p,
                                                                                                   k=args.k)
            for i in rng.integers(0, len(users), args.requests)]
    for calls in (warm[:20], cold[:20]):  # warm-up: tag vectors memoised, torch kernels loaded
        time_calls(calls, 1)

    records = [record("api", "load_seconds", load_s, "s", n=len(users))]
    print(f"{'slice':6} {'threads':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for slice_name, calls in (("warm", warm), ("cold", cold)):
        for threads in (1, 8):
            lat, wall = time_calls(calls, threads)
            p50, p99, rps = float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), len(calls) / wall
            print(f"{slice_name:6} {threads:7d} {p50:8.2f} {p99:8.2f} {rps:8.1f}")
            ctx = dict(slice=slice_name, threads=threads, n=len(calls), k=args.k, seed=args.seed)
            records += [record("api", "latency_p50_ms", p50, "ms", **ctx),
                        record("api", "latency_p99_ms", p99, "ms", **ctx),
                        record("api", "throughput_rps", rps, "1/s", **ctx)]
    print(f"wrote {write_records(records, 'api', args.out)}")


if __name__ == "__main__":
    main()
