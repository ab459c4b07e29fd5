"""Explanation quality (benchmark "explanations"): the rubric over served (user, item) explanations.

Loads a recommender folder, samples `--sample` known users (seeded), serves each their top k and judges
every explanation with `explain.rubric.judge` against the facts it was looked up by: factual (closed-world
check), relevant (names the evidence or a shared attribute), specific (a history item or a genre/brand, not
only a decade), fluent (no repetition, within length). Records, per source all | llm | template:
metric factual / relevant / specific / fluent (unit share), plus template_share for source all.

    python benchmarks/explanations.py --artifacts artifacts/ml-100k [--sample 200 --seed 0] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

# benchmarks/retrieval.py would shadow the `retrieval` package when this folder is sys.path[0].
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from explain.facts import ExplainFacts, catalogue_categories
from explain.rubric import RUBRIC, judge
from llmrec.bench import record, write_records
from llmrec.pipeline import Recommender
from llmrec.schema import Recommendation

BENCHMARK = "explanations"


def sample_served(rec: Recommender, n_users: int, seed: int, k: int) -> list[tuple[Recommendation, ExplainFacts]]:
    """Served recommendations with their explanation facts for a seeded sample of known users."""
    users = sorted(rec._sequences, key=lambda u: (len(u), u))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(users), size=min(n_users, len(users)), replace=False)
    return [pair for i in sorted(chosen) for pair in rec.served_facts(users[i], k)]


def explanation_records(served: list[tuple[Recommendation, ExplainFacts]], vocabulary: frozenset[str],
                        max_chars: int, seed: int) -> list[dict[str, Any]]:
    """Rubric shares per source (all, llm, template) and the template share, as `llmrec.bench` records."""
    rows = [(r.explanation_flagged, judge(r.explanation or "", f, vocabulary, max_chars)) for r, f in served]
    records = []
    for source, keep in (("all", lambda flagged: True), ("llm", lambda flagged: not flagged),
                         ("template", lambda flagged: flagged)):
        judged = [j for flagged, j in rows if keep(flagged)]
        if not judged:
            continue
        for metric in RUBRIC:
            share = sum(j[metric] for j in judged) / len(judged)
            records.append(record(BENCHMARK, metric, share, "share", source=source, n=len(judged), seed=seed))
    if rows:
        share = sum(flagged for flagged, _ in rows) / len(rows)
        records.append(record(BENCHMARK, "template_share", share, "share", source="all", n=len(rows), seed=seed))
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True, help="Recommender folder (llmrec demo / build).")
    parser.add_argument("--sample", type=int, default=200, help="Known users sampled.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", default=None, help="JSON path; default reports/bench/explanations.json.")
    args = parser.parse_args(argv)
    if args.sample <= 0 or args.k <= 0:
        parser.error("--sample and --k must be positive")

    rec = Recommender.load(args.artifacts)
    served = sample_served(rec, args.sample, args.seed, args.k)
    records = explanation_records(served, catalogue_categories(rec.items.values()), rec.config.explain.max_chars,
                                  args.seed)
    for r in records:
        print(f"{r['source']:8} {r['metric']:14} {r['value']:.3f}  (n={r['n']})")
    print(f"wrote {write_records(records, BENCHMARK, args.out)}")


if __name__ == "__main__":
    main()
