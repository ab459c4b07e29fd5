"""Ranking metrics as named pure functions, shared by every model (STYLE 13/15).

Protocol: full-catalogue ranking. Column 0 of a score matrix is padding and is never ranked; the items a
user has already seen are excluded (they cannot be the next item in a dataset without repeats), except the
target itself, which always stays rankable so that a model can never be credited or blamed for an exclusion.

Ties are broken pessimistically: the target ranks below every other candidate with an equal score. A model
that gives many items the same score (popularity on a cold user, item-kNN with an empty history) gets no
credit for lucky tie order.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def exclusion_mask(n_users: int, n_cols: int, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """[B, V] bool, True where an item may not be ranked: padding column 0 and each user's seen items."""
    if len(exclude) != n_users:
        raise ValueError(f"exclude has {len(exclude)} rows, scores have {n_users}")
    mask = np.zeros((n_users, n_cols), dtype=bool)
    mask[:, 0] = True
    for b, seen in enumerate(exclude):
        seen = np.asarray(seen, dtype=np.int64)
        if seen.size:
            if seen.min() < 0 or seen.max() >= n_cols:
                raise ValueError(f"exclude[{b}] holds item index outside 0..{n_cols - 1}")
            mask[b, seen] = True
    return mask


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """[B] 1-based rank of each target among all non-excluded items (pessimistic ties, see module doc).

    scores: [B, V] float; targets: [B] item indices in 1..V-1; exclude[b]: item indices seen by user b.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    b, v = scores.shape
    if targets.shape != (b,):
        raise ValueError(f"targets has shape {targets.shape}, expected ({b},)")
    if (targets < 1).any() or (targets >= v).any():
        raise ValueError(f"targets must be item indices in 1..{v - 1} (0 is padding)")
    mask = exclusion_mask(b, v, exclude)
    rows = np.arange(b)
    mask[rows, targets] = False  # the target is always rankable
    t = scores[rows, targets][:, None]  # [B, 1]
    ahead = (scores >= t) & ~mask  # [B, V]: candidates at or above the target, the target included
    return ahead.sum(axis=1).astype(np.int64)


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item per user: 1/log2(rank+1) if rank <= k, else 0."""
    ranks = _check_ranks(ranks)
    _check_k(k)
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    return float(gains.mean()) if ranks.size else 0.0


def hr_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean hit rate@k (= recall@k with one target): share of users whose target ranks in the top k."""
    ranks = _check_ranks(ranks)
    _check_k(k)
    return float((ranks <= k).mean()) if ranks.size else 0.0


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the full catalogue (no cut-off)."""
    ranks = _check_ranks(ranks)
    return float((1.0 / ranks).mean()) if ranks.size else 0.0


def topk(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> np.ndarray:
    """[B, k] item indices of the k best non-excluded items, best first; equal scores: lower index first.

    Padding and seen items are never returned; if fewer than k items remain the rest is padded with 0.
    """
    _check_k(k)
    scores = np.asarray(scores, dtype=np.float64)
    b, v = scores.shape
    masked = np.where(exclusion_mask(b, v, exclude), -np.inf, scores)  # [B, V]
    k_eff = min(k, v)
    # argpartition picks the candidates, a stable lexsort orders them (score desc, index asc).
    part = np.argpartition(-masked, k_eff - 1, axis=1)[:, :k_eff] if k_eff < v else np.tile(np.arange(v), (b, 1))
    # Items tied with the k-th score may be cut arbitrarily by argpartition; widen to all ties, then cut.
    kth = np.take_along_axis(masked, part, axis=1).min(axis=1, keepdims=True)  # [B, 1]
    out = np.zeros((b, k), dtype=np.int64)
    for i in range(b):
        cand = np.flatnonzero(masked[i] >= kth[i])
        cand = cand[np.isfinite(masked[i, cand])]
        order = np.lexsort((cand, -masked[i, cand]))[:k]
        out[i, : order.size] = cand[order]
    return out


def coverage_at_k(topk_lists: np.ndarray, n_items: int) -> float:
    """Catalogue coverage: share of the n_items real items that appear in at least one top-k list."""
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    items = np.unique(np.asarray(topk_lists, dtype=np.int64))
    return float(np.count_nonzero(items > 0)) / n_items


def long_tail_share_at_k(topk_lists: np.ndarray, long_tail_item_set: Iterable[int]) -> float:
    """Share of recommended slots (padding 0 not counted) that hold a long-tail item."""
    lists = np.asarray(topk_lists, dtype=np.int64)
    real = lists[lists > 0]
    if real.size == 0:
        return 0.0
    tail = np.fromiter(long_tail_item_set, dtype=np.int64)
    return float(np.isin(real, tail).mean())


def long_tail_items(counts: np.ndarray, head_share: float = 0.2) -> np.ndarray:
    """Item indices outside the head: the head is the `head_share` most-interacted items (by train counts).

    counts: [V] interactions per item index (column 0 = padding, ignored). Ties at the head boundary are
    broken by lower index first, so the set is deterministic.
    """
    if not 0.0 < head_share < 1.0:
        raise ValueError(f"head_share must be in (0, 1), got {head_share}")
    counts = np.asarray(counts)
    n = counts.size - 1
    order = np.lexsort((np.arange(1, n + 1), -counts[1:])) + 1  # popular first
    n_head = int(round(head_share * n))
    return np.sort(order[n_head:])


def _check_ranks(ranks: np.ndarray) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size and ranks.min() < 1:
        raise ValueError(f"ranks are 1-based, got a minimum of {ranks.min()}")
    return ranks


def _check_k(k: int) -> None:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
