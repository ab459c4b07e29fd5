"""Small test doubles shared by several test files (fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np


class RecordingScorer:
    """A `SequenceScorer` that remembers every (user, history) it is shown; scores by item index."""

    name = "recording"

    def __init__(self, vocab_size):
        self.vocab_size, self.seen = vocab_size, []

    def score(self, histories, user_ids):
        self.seen += [(u, np.asarray(h).copy()) for u, h in zip(user_ids, histories)]
        return np.tile(np.arange(self.vocab_size, dtype=np.float32), (len(histories), 1))
