"""Latency of `Recommender.recommend` (benchmark "api"): warm and cold users, 1 and 8 concurrent callers,
in process or over HTTP (`--http`: `llmrec serve` in a child process, httpx clients here).

Reads a recommender folder built by `llmrec demo` (default artifacts/ml-100k). Warm users are known users
(requests by user_id); cold users are new users with 2 real events and a profile (history + profile). For
fairness every (slice, callers) cell starts from a freshly loaded Recommender (a fresh server with --http)
and the same single-caller warm-up. Records: metric latency_p50_ms / latency_p99_ms / throughput_rps /
template_share (share of served items whose explanation is a flagged template), slice warm|cold, key
callers, mode inproc|http.

    python benchmarks/api.py [--artifacts artifacts/ml-100k] [--requests 400] [--http] [--out reports/bench/api.json]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# benchmarks/retrieval.py would shadow the `retrieval` package when this folder is sys.path[0].
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from llmrec.bench import record, write_records  # noqa: E402
from llmrec.pipeline import Recommender, set_request_threads  # noqa: E402

WARMUP = 20  # single-caller requests per slice before every cell: memos filled, kernels loaded


def time_calls(calls: Sequence[Callable[[], Any]], callers: int) -> tuple[np.ndarray, float, list[Any]]:
    """Per-call latencies [n] in ms, the wall time of all calls with `callers` concurrent callers, the results."""

    def timed(call):
        t = time.perf_counter()
        out = call()
        return (time.perf_counter() - t) * 1000.0, out

    t0 = time.perf_counter()
    if callers == 1:
        pairs = [timed(c) for c in calls]
    else:
        with ThreadPoolExecutor(callers) as pool:
            pairs = list(pool.map(timed, calls))
    wall = time.perf_counter() - t0
    return np.asarray([p[0] for p in pairs]), wall, [p[1] for p in pairs]


def template_share(results: Sequence[Sequence[dict]]) -> float:
    """Share of served items whose explanation is a flagged template (0 when nothing was served)."""
    flags = [bool(r.get("explanation_flagged")) for res in results for r in res]
    return float(np.mean(flags)) if flags else 0.0


def make_requests(rec: Recommender, n: int, seed: int) -> dict[str, list[dict]]:
    """The request bodies per slice: warm = known user ids, cold = 2 random catalogue items + a real profile."""
    rng = np.random.default_rng(seed)
    users = sorted(rec._sequences)
    ids = list(rec.vocab.ids)
    warm = [{"user_id": users[i]} for i in rng.integers(0, len(users), n)]
    cold = [{"history": [ids[j] for j in rng.integers(0, len(ids), 2)], "profile": rec.dataset.profile(users[i])}
            for i in rng.integers(0, len(users), n)]
    return {"warm": warm, "cold": cold}


def inproc_cell(artifacts: str, requests: dict[str, list[dict]], name: str, callers: int, k: int):
    """One in-process cell on a freshly loaded Recommender."""
    rec = Recommender.load(artifacts)

    def call(body: dict) -> Callable[[], list[dict]]:
        return lambda: [r.model_dump(include={"explanation_flagged"}) for r in rec.recommend(
            body.get("user_id"), history=body.get("history"), profile=body.get("profile"), k=k)]

    for slice_name in requests:
        time_calls([call(b) for b in requests[slice_name][:WARMUP]], 1)
    return time_calls([call(b) for b in requests[name]], callers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_cell(artifacts: str, requests: dict[str, list[dict]], name: str, callers: int, k: int, threads: int):
    """One cell against a fresh `llmrec serve` child process on loopback."""
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "llmrec", "serve", "--artifacts", artifacts, "--port", str(port),
           "--log-level", "warning", "--threads", str(threads)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          limits=httpx.Limits(max_connections=callers + 1)) as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    client.get("/health").raise_for_status()
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"`{' '.join(cmd)}` did not start") from None
                    time.sleep(0.5)

            def call(body: dict) -> Callable[[], list[dict]]:
                def post() -> list[dict]:
                    res = client.post("/recommendations", json={**body, "k": k})
                    res.raise_for_status()
                    return res.json()
                return post

            for slice_name in requests:
                time_calls([call(b) for b in requests[slice_name][:WARMUP]], 1)
            return time_calls([call(b) for b in requests[name]], callers)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts/ml-100k", help="Recommender folder (llmrec demo).")
    parser.add_argument("--requests", type=int, default=400, help="Requests per (slice, callers) cell.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per request "
                        "(1: concurrency comes from callers).")
    parser.add_argument("--callers", default="1,8", help="Comma-separated concurrent callers per cell.")
    parser.add_argument("--http", action="store_true", help="Over HTTP: `llmrec serve` child + httpx clients.")
    parser.add_argument("--out", default=None, help="JSON path; default reports/bench/api.json (api-http.json).")
    args = parser.parse_args()

    set_request_threads(args.threads)
    t = time.perf_counter()
    rec = Recommender.load(args.artifacts)
    load_s = time.perf_counter() - t
    requests = make_requests(rec, args.requests, args.seed)
    mode = "http" if args.http else "inproc"
    records = [record("api", "load_seconds", load_s, "s", n=len(rec._sequences))]
    del rec
    print(f"{'mode':6} {'slice':6} {'callers':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'template':>8}")
    for slice_name in requests:
        for callers in (int(c) for c in args.callers.split(",")):
            if args.http:
                lat, wall, results = http_cell(args.artifacts, requests, slice_name, callers, args.k, args.threads)
            else:
                lat, wall, results = inproc_cell(args.artifacts, requests, slice_name, callers, args.k)
            p50, p99, rps = float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), len(lat) / wall
            share = template_share(results)
            print(f"{mode:6} {slice_name:6} {callers:7d} {p50:8.2f} {p99:8.2f} {rps:8.1f} {share:8.2f}")
            ctx = dict(mode=mode, slice=slice_name, callers=callers, threads=args.threads, n=len(lat), k=args.k,
                       seed=args.seed, warmup=WARMUP)
            records += [record("api", "latency_p50_ms", p50, "ms", **ctx),
                        record("api", "latency_p99_ms", p99, "ms", **ctx),
                        record("api", "throughput_rps", rps, "1/s", **ctx),
                        record("api", "template_share", share, "share", **ctx)]
    print(f"wrote {write_records(records, 'api-http' if args.http else 'api', args.out)}")


if __name__ == "__main__":
    main()
