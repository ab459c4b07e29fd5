"""The one evaluation split every model uses: leave-one-out by time, plus the "cold" view.

Built once from the raw events (sorted by user, time, then input order, so ties are reproducible):
each user's last event is the test target, the second-to-last the validation target, the rest is
training history. A model scored on the test target may see the training history and the validation
event, nothing later: `Split.history("test")`. Users with fewer than `min_events` events have no targets;
their events stay in training and the count is reported in `Split.report`.

Optional user-level holdout (`holdout_share` > 0): a seeded share of the users is taken out whole. Their
events are in `Split.holdout` only (never in train/valid/test), so every model trained on `Split.train`
(SASRec, towers, item-kNN, popularity, the LoRA SFT data) has never seen them: the true cold-start users of
the evaluation. Membership is decided per user by a salted sha256 (stable across processes and input order).
With the holdout off the split, and its hash, are exactly the plain leave-one-out split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from collections.abc import Collection
from typing import Literal

import numpy as np
import pandas as pd

from llmrec.data.datasets import sort_events
from llmrec.errors import DataError

Stage = Literal["valid", "test"]


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame  # events before each user's validation target
    valid: pd.DataFrame  # one row per user with targets
    test: pd.DataFrame  # one row per user with targets
    report: dict = field(default_factory=dict)
    holdout: pd.DataFrame | None = None  # every event of the held-out users (None: holdout off)

    @property
    def holdout_users(self) -> frozenset[str]:
        """Users whose events no model may train on (empty when the holdout is off)."""
        if self.holdout is None:
            return frozenset()
        return frozenset(self.holdout["user_id"].astype(str))

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
        if self.holdout is not None:  # only then: the plain split keeps the hash it always had
            h.update(b"\x1eholdout")
            h.update("\x1f".join(sorted(self.holdout_users)).encode())
        return h.hexdigest()[:16]


def holdout_user_ids(user_ids, share: float, seed: int) -> set[str]:
    """A seeded `share` of the distinct users (rounded), chosen by the smallest sha256(seed, user) digests."""
    if not 0.0 <= share < 1.0:
        raise DataError(f"holdout share must be in [0, 1), got {share}")
    users = sorted({str(u) for u in user_ids})
    n = int(round(share * len(users)))
    ranked = sorted(users, key=lambda u: hashlib.sha256(f"{seed}\x1f{u}".encode()).hexdigest())
    return set(ranked[:n])


def split_leave_one_out(events: pd.DataFrame, min_events: int = 3, holdout_share: float = 0.0,
                        holdout_seed: int = 0, targets: Collection[str] | None = None) -> Split:
    """Last event per user -> test, second-to-last -> valid, the rest -> train.

    holdout_share > 0: that share of the users is first taken out whole into `Split.holdout`.
    targets: the behaviour types that may be a target (`BehaviorVocab.target_names`); None or every event's
    type: the plain split. Otherwise a user's last two *target* events are test and valid, train is what came
    before the valid one (views, carts, ... included), and the user's other events after the valid target are
    left out (counted in the report as events_after_valid_target): seen by no model, so nothing leaks.
    """
    ev = sort_events(events)
    holdout = None
    if holdout_share > 0:
        held = holdout_user_ids(ev["user_id"], holdout_share, holdout_seed)
        out = ev["user_id"].astype(str).isin(held).to_numpy()
        holdout, ev = ev[out].reset_index(drop=True), ev[~out].reset_index(drop=True)
    is_target = np.ones(len(ev), dtype=bool) if targets is None else ev["behavior"].isin(list(targets)).to_numpy()
    if is_target.all():
        counts = ev.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
        # Position from the end within each user: 0 = last event.
        from_end = ev.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
        eligible = counts >= min_events
        is_test = eligible & (from_end == 0)
        is_valid = eligible & (from_end == 1)
        after = np.zeros(len(ev), dtype=bool)
    else:
        is_test, is_valid, after, eligible = _target_positions(ev, is_target, min_events)
    train = ev[~(is_test | is_valid | after)].reset_index(drop=True)
    report = {
        "users": int(ev["user_id"].nunique()),
        "users_with_targets": int(is_test.sum()),
        "users_too_short": int(ev.loc[~eligible, "user_id"].nunique()),
        "min_events": min_events,
    }
    if not is_target.all():
        report.update(target_behaviors=sorted(set(targets)), events_after_valid_target=int(after.sum()))
    if holdout is not None:
        report.update(holdout_users=int(holdout["user_id"].nunique()), holdout_share=holdout_share,
                      holdout_seed=holdout_seed)
    return Split(train=train, valid=ev[is_valid].reset_index(drop=True), test=ev[is_test].reset_index(drop=True),
                 report=report, holdout=holdout)


def _target_positions(ev: pd.DataFrame, is_target: np.ndarray, min_events: int):
    """(E,) masks: test and valid targets (a user's last two target events), the events after the valid
    target that are not the test one, and the rows of users with targets (>= 2 target events and at least
    `min_events` events up to the test target)."""
    n = len(ev)
    users = ev["user_id"].to_numpy()
    rows = np.arange(n)
    t_from_end = np.full(n, -1)
    t_from_end[is_target] = ev[is_target].groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    by_user = pd.Series(rows, index=users).groupby(level=0, sort=False)
    test_row = pd.Series(np.where(t_from_end == 0, rows, -1), index=users).groupby(level=0, sort=False).transform("max")
    valid_row = pd.Series(np.where(t_from_end == 1, rows, -1), index=users).groupby(level=0, sort=False).transform("max")
    first_row = by_user.transform("min").to_numpy()
    test_row, valid_row = test_row.to_numpy(), valid_row.to_numpy()
    eligible = (valid_row >= 0) & (test_row - first_row + 1 >= min_events)
    is_test = eligible & (rows == test_row)
    is_valid = eligible & (rows == valid_row)
    after = eligible & (rows > valid_row) & ~is_test
    return is_test, is_valid, after, eligible


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
