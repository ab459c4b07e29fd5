"""The one interface between models and the evaluator: score every catalogue item for a batch of users.

Every model (popularity, item-kNN, SASRec, the three-tower retriever, LLM re-rankers) implements
`SequenceScorer`, so `llmrec.eval.run` ranks them all with the same code (`llmrec.metrics`) on the same split.
Item indices come from `llmrec.data.ItemVocab`: 1..N are items, column 0 is padding and is never ranked.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class SequenceScorer(Protocol):
    name: str

    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> np.ndarray:
        """[B, vocab.size] float32 scores over item indices (llmrec.data.ItemVocab; column 0 = padding,
        never ranked). histories[b] = the user's visible item indices in time order (may be empty: cold
        users). user_ids[b] names the same user, for models with per-user features; scorers must not use it
        to look up anything the evaluator did not pass in `histories` (that would leak the hidden target)."""
        ...


def check_scores(scores: np.ndarray, batch: int, vocab_size: int, name: str = "scorer") -> np.ndarray:
    """Validate a scorer's output shape and values; the evaluator calls it on every batch."""
    scores = np.asarray(scores)
    if scores.shape != (batch, vocab_size):
        raise ValueError(f"{name}.score returned shape {scores.shape}, expected ({batch}, {vocab_size})")
    if not np.isfinite(scores[:, 1:]).all():
        raise ValueError(f"{name}.score returned non-finite scores for real items (columns 1..)")
    return scores.astype(np.float32, copy=False)


def rank_split_targets(scorer: SequenceScorer, histories: dict[str, np.ndarray], targets: dict[str, int],
                       vocab_size: int, batch_size: int = 256) -> np.ndarray:
    """[U] 1-based ranks of each user's target (full catalogue, the user's history excluded), in `targets` order.

    histories: user -> visible item indices in time order (missing = cold user); targets: user -> item index.
    The ranking rule lives in `llmrec.metrics.target_ranks`; this only batches the scorer.
    """
    from llmrec.metrics import target_ranks  # local: keeps `retrieval.base` importable without llmrec.metrics

    users = list(targets)
    empty = np.zeros(0, dtype=np.int64)
    ranks = np.empty(len(users), dtype=np.int64)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        hist = [np.asarray(histories.get(u, empty), dtype=np.int64) for u in batch]
        scores = check_scores(scorer.score(hist, batch), len(batch), vocab_size, getattr(scorer, "name", "scorer"))
        ranks[start : start + len(batch)] = target_ranks(scores, np.array([targets[u] for u in batch]), hist)
    return ranks
