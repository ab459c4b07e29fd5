"""The one interface between models and the evaluator: score every catalogue item for a batch of users.

Every model (popularity, item-kNN, SASRec, the three-tower retriever, LLM re-rankers) implements
`SequenceScorer`, so `llmrec.evaluate` ranks them all with the same code (`llmrec.metrics`) on the same split.
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
