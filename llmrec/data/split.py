"""The one evaluation split every model uses: leave-one-out by time, plus the "cold" view.

Built once from the raw events (sorted by user, time, then input order, so ties are reproducible):
each user's last event is the test target, the second-to-last the validation target, the rest is
training history. A model scored on the test target may see the training history and the validation
event, nothing later: `Split.history("test")`. Users with fewer than `min_events` events have no targets;
their events stay in training and the count is reported in `Split.report`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from llmrec.data.datasets import sort_events

Stage = Literal["valid", "test"]


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame  # events before each user's validation target
    valid: pd.DataFrame  # one row per user with targets
    test: pd.DataFrame  # one row per user with targets
    report: dict = field(default_factory=dict)

    def targets(self, stage: Stage) -> pd.DataFrame:
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        return self.valid if stage == "valid" else self.test

    def history(self, stage: Stage) -> pd.DataFrame:
        """All events a model may see when predicting the `stage` targets (no leakage)."""
        if stage == "valid":
            return self.train
        self.targets(stage)
        return sort_events(pd.concat([self.train, self.valid], ignore_index=True))

    def as_of(self, stage: Stage) -> pd.Series:
        """Per user, the time of the target: narratives and features are computed as of then."""
        t = self.targets(stage)
        return pd.Series(t["timestamp"].to_numpy(), index=t["user_id"].to_numpy(), name="as_of")

    @property
    def hash(self) -> str:
        """A stable fingerprint of the split, written into every artifact manifest."""
        h = hashlib.sha256()
        for frame in (self.train, self.valid, self.test):
            for col in ("user_id", "item_id"):
                h.update("\x1f".join(frame[col].astype(str)).encode())
            h.update(frame["timestamp"].astype("int64").to_numpy().tobytes())
        return h.hexdigest()[:16]


def split_leave_one_out(events: pd.DataFrame, min_events: int = 3) -> Split:
    """Last event per user -> test, second-to-last -> valid, the rest -> train."""
    ev = sort_events(events)
    counts = ev.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    # Position from the end within each user: 0 = last event.
    from_end = ev.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    eligible = counts >= min_events
    is_test = eligible & (from_end == 0)
    is_valid = eligible & (from_end == 1)
    train = ev[~(is_test | is_valid)].reset_index(drop=True)
    report = {
        "users": int(ev["user_id"].nunique()),
        "users_with_targets": int(is_test.sum()),
        "users_too_short": int(ev.loc[~eligible, "user_id"].nunique()),
        "min_events": min_events,
    }
    return Split(train=train, valid=ev[is_valid].reset_index(drop=True), test=ev[is_test].reset_index(drop=True),
                 report=report)


def truncate_history(events: pd.DataFrame, n_last: int) -> pd.DataFrame:
    """The cold view: keep only each user's last `n_last` events (0 keeps none)."""
    if n_last < 0:
        raise ValueError(f"n_last must be >= 0, got {n_last}")
    ev = sort_events(events)
    from_end = ev.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    return ev[from_end < n_last].reset_index(drop=True)


def events_before(events: pd.DataFrame, as_of: pd.Timestamp | pd.Series) -> pd.DataFrame:
    """Events strictly before `as_of` (one time for all, or a per-user Series indexed by user_id)."""
    if isinstance(as_of, pd.Series):
        cutoff = events["user_id"].map(as_of)
        keep = cutoff.notna().to_numpy() & (events["timestamp"] < cutoff).to_numpy()
    else:
        keep = (events["timestamp"] < pd.Timestamp(as_of)).to_numpy()
    return events[np.asarray(keep, dtype=bool)].reset_index(drop=True)
