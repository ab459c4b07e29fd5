"""Paired significance of a row against the reference row: per-user differences, bootstrap over users.

Every row is scored on the same users as the reference (SASRec+), so the per-user difference of a metric
removes the user-difficulty variance that dominates a comparison of two means. Seeds are pooled by first
averaging each user's metric over the seeds of each row (what the reported mean is), then the users are
resampled with replacement: the 95% interval is over the population of users, not over training noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from llmrec.errors import DataError


@dataclass(frozen=True)
class PairedDiff:
    """Mean of (row - reference) over the shared users, its bootstrap interval, and the users it rests on."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.lo > 0.0 or self.hi < 0.0


def bootstrap_mean_interval(diffs: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                            seed: int = 0) -> PairedDiff:
    """Percentile bootstrap interval of the mean of `diffs` [U] (resampling users with replacement)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 1 or diffs.size == 0:
        raise DataError(f"bootstrap needs a non-empty 1-d array of per-user differences, got shape {diffs.shape}")
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise DataError(f"bootstrap needs 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diffs.size, size=(n_boot, diffs.size))  # [B, U]
    means = diffs[idx].mean(axis=1)  # [B]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return PairedDiff(mean=float(diffs.mean()), lo=float(lo), hi=float(hi), n=int(diffs.size))


def seed_mean_by_user(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per user, the mean over the seeds (runs) that scored that user; runs map user id -> metric."""
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for run in runs:
        for u, v in run.items():
            total[u] = total.get(u, 0.0) + float(v)
            count[u] = count.get(u, 0) + 1
    return {u: total[u] / count[u] for u in total}


def paired_difference(row: Sequence[Mapping[str, float]], reference: Sequence[Mapping[str, float]],
                      n_boot: int = 2000, seed: int = 0) -> PairedDiff | None:
    """Row minus reference on the users both scored (seed means first); None when they share no user."""
    a, b = seed_mean_by_user(row), seed_mean_by_user(reference)
    users = sorted(set(a) & set(b))
    if not users:
        return None
    return bootstrap_mean_interval(np.array([a[u] - b[u] for u in users]), n_boot=n_boot, seed=seed)
