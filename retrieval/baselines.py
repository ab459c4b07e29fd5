"""Sanity baselines for the offline comparison: popularity and item-kNN, both `SequenceScorer`s.

Both are fitted on training events only (the evaluator passes `Split.train`, or `Split.history("test")` if
it refits for the test stage); neither looks at `user_ids`, only at the histories it is given.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from llmrec.data import ItemVocab

# Dense item-item similarity: fine for MovieLens-size catalogues, not for millions of items.
MAX_KNN_ITEMS = 20_000


def count_items(events: pd.DataFrame, vocab: ItemVocab) -> np.ndarray:
    """[V] interactions per item index (column 0 = padding, always 0)."""
    return np.bincount(vocab.encode(events["item_id"]), minlength=vocab.size).astype(np.float64)


class PopularityScorer:
    """Score = number of training interactions: the same ranking for every user."""

    name = "popularity"

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts, dtype=np.float32)  # [V]

    @classmethod
    def fit(cls, events: pd.DataFrame, vocab: ItemVocab) -> "PopularityScorer":
        return cls(count_items(events, vocab))

    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))  # [B, V]


class ItemKNNScorer:
    """Item-based collaborative filtering (Sarwar et al. 2001) on binary train interactions.

    sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|·|U_j|) + shrink): cosine, shrunk towards 0 for items with few
    co-occurrences, so a pair seen together once does not outweigh well-supported neighbours. Each item
    keeps only its `neighbors` most similar items (the rest is set to 0), which removes noise and is the
    usual kNN setting (defaults chosen on ML-100K validation NDCG@10 over neighbors 20..400, shrink 0..50:
    50 and 10 gave 0.0705). score(u, j) = sum over the history items i of sim(i, j). A tiny popularity prior
    (at most 1e-6, below any non-zero similarity) orders the items no history item points to, so a cold
    user gets the popularity ranking instead of an all-tied one.
    """

    name = "item_knn"

    def __init__(self, similarity: np.ndarray, counts: np.ndarray):
        self.similarity = np.asarray(similarity, dtype=np.float32)  # [V, V], row i: neighbours of item i
        self.prior = (1e-6 * counts / max(float(np.max(counts)), 1.0)).astype(np.float32)  # [V]

    @classmethod
    def fit(cls, events: pd.DataFrame, vocab: ItemVocab, neighbors: int = 50, shrink: float = 10.0) -> "ItemKNNScorer":
        if neighbors < 1:
            raise ValueError(f"neighbors must be >= 1, got {neighbors}")
        if shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {shrink}")
        if vocab.size > MAX_KNN_ITEMS:
            raise ValueError(f"ItemKNNScorer keeps a dense [V, V] matrix; {vocab.size} items exceed {MAX_KNN_ITEMS}")
        users, user_codes = np.unique(events["user_id"].to_numpy(), return_inverse=True)
        x = np.zeros((len(users), vocab.size), dtype=np.float32)  # [U, V] binary interactions
        x[user_codes, vocab.encode(events["item_id"])] = 1.0
        co = x.T @ x  # [V, V] co-occurrence counts
        n = np.diag(co).copy()  # [V] users per item
        sim = co / (np.sqrt(np.outer(n, n)) + shrink + 1e-12)
        np.fill_diagonal(sim, 0.0)
        sim[0, :] = sim[:, 0] = 0.0
        if neighbors < vocab.size - 1:
            # Keep each item's top `neighbors` similarities (row-wise), zero the rest.
            cut = np.argpartition(-sim, neighbors - 1, axis=1)[:, :neighbors]  # [V, K]
            kept = np.zeros_like(sim)
            np.put_along_axis(kept, cut, np.take_along_axis(sim, cut, axis=1), axis=1)
            sim = kept
        return cls(sim, n)

    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> np.ndarray:
        out = np.tile(self.prior, (len(histories), 1))  # [B, V]
        for b, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64)
            if h.size:
                out[b] += self.similarity[h].sum(axis=0)
        return out
