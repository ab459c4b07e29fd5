"""The evaluation protocol: one split, its slices, the long-tail set and the one scoring code (STYLE 13/14).

- `llmrec.data.split.split_leave_one_out` with a seeded user-level holdout (`EvaluateConfig.cold_user_share`):
  each remaining user's last event is the test target, the one before it the validation target. Models train
  on `Split.train` only, so the held-out users' events reach no model (SASRec, towers, item-kNN, popularity).
- Full-catalogue ranking, ties pessimistic, the items of the history the scorer was given excluded
  (`llmrec.metrics.target_ranks`).
- Slices:
  `all` the test targets with the full visible history;
  `valid` the validation targets with the training history (rows and verdicts are chosen here, never on test);
  `short_N` warm users shown only their last N visible events (trained on their full history: a short
  session, not a new user);
  `cold_user_N` held-out users shown their first N events, target = event N+1 (true cold start: the model
  has never seen the user);
  `long_tail` users whose test item is long-tail.
- Long tail: sort items by training interactions; the head is the smallest set of most popular items that
  holds `long_tail_mass` (80%) of them; every other item, unseen ones included, is long-tail.
- Metrics at k = 10: ndcg, hr, mrr (no cut-off), coverage (share of the catalogue in any top-k list of the
  slice) and long_tail_share (share of recommended slots holding a long-tail item); NDCG is also kept per
  user for the paired significance test (`llmrec.eval.stats`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from llmrec.config import EvaluateConfig
from llmrec.data import Dataset, ItemVocab, sort_events, user_sequences
from llmrec.data.split import Split, split_leave_one_out, truncate_history
from llmrec.errors import DataError
from llmrec.metrics import (
    coverage_at_k,
    hr_at_k,
    long_tail_share_at_k,
    mrr,
    ndcg_at_k,
    target_ranks,
    topk,
)
from retrieval.base import SequenceScorer, check_scores


@dataclass
class SliceView:
    """One slice: its users, their targets and the history each model is shown."""

    name: str
    users: list[str]
    targets: np.ndarray  # [U] item indices
    histories: list[np.ndarray]  # [U] visible item indices in time order
    events: pd.DataFrame  # the visible events themselves (tags, narratives and cold-start prompts read them)
    as_of: pd.Series | None = None  # per user (str index), the target's time: narratives are rendered as of it

    def subset(self, users: Sequence[str]) -> "SliceView":
        pos = {u: n for n, u in enumerate(self.users)}
        rows = [pos[u] for u in users]
        as_of = None if self.as_of is None else self.as_of.loc[list(users)]
        return SliceView(self.name, [self.users[r] for r in rows], self.targets[rows],
                         [self.histories[r] for r in rows], self.events[self.events["user_id"].isin(set(users))],
                         as_of)


@dataclass
class Protocol:
    split: Split
    vocab: ItemVocab
    slices: dict[str, SliceView]
    long_tail: np.ndarray  # item indices outside the head
    k: int


@dataclass
class SliceScore:
    """A scorer on one slice: the five metrics and NDCG per user (the paired test's input).

    Users are keyed by `user_key` (a sha256 prefix), not their dataset id: the paired test only needs the same
    key for the same user, and the settings file that stores these must not republish a dataset's user ids.
    """

    metrics: dict[str, float]
    ndcg_by_user: dict[str, float]


def user_key(user_id: str) -> str:
    """A stable, non-identifying key of a user id (hashlib, not the salted builtin hash)."""
    return hashlib.sha256(str(user_id).encode()).hexdigest()[:16]


def long_tail_by_mass(counts: np.ndarray, mass: float) -> np.ndarray:
    """Item indices (1..V-1) outside the head: the fewest most-interacted items holding `mass` of all counts.

    counts: [V] training interactions per item index (column 0 = padding). Equal counts: lower index first.
    """
    counts = np.asarray(counts, dtype=np.float64)
    order = np.lexsort((np.arange(1, counts.size), -counts[1:])) + 1  # popular first
    cum = np.cumsum(counts[order])
    n_head = int(np.searchsorted(cum, mass * cum[-1] - 1e-9) + 1) if cum.size and cum[-1] > 0 else 0
    return np.sort(order[n_head:])


def sample_users(users: Sequence[str], n: int | None, seed: int) -> list[str]:
    """A seeded sample of `n` users, kept in the input order (all of them when n is None or too large)."""
    if n is None or n >= len(users):
        return list(users)
    keep = np.sort(np.random.default_rng(seed).choice(len(users), size=n, replace=False))
    return [users[i] for i in keep]


def tags_parquet(path: str | Path) -> Path:
    """A mined-tags Parquet, given itself or the `llmrec mine-interests` folder holding profiles.parquet."""
    path = Path(path)
    return path / "profiles.parquet" if path.is_dir() else path


def require_as_of(path: str | Path, stage: str) -> None:
    """Fail unless the `llmrec mine-interests` folder of `path` says it was mined as of `stage` (its manifest's
    "as_of"; folders from before the option were mined as of the test time)."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise DataError(f"{manifest}: missing; cannot tell when the tags in {path} were mined (need as_of {stage!r})")
    got = json.loads(manifest.read_text()).get("as_of", "test")
    if got != stage:
        raise DataError(f"{manifest}: tags mined as of {got!r}, this input needs {stage!r} "
                        f"(`llmrec mine-interests --as-of {stage}`)")


def target_behaviors(dataset: Dataset, config: EvaluateConfig) -> tuple[str, ...]:
    """The behaviour types that count as targets: `config.target_behaviors`, else the dataset's."""
    return dataset.behavior_vocab.target_names(config.target_behaviors)


def split_for(dataset: Dataset, config: EvaluateConfig) -> Split:
    """The evaluation split: leave-one-out on the target behaviours plus the seeded cold-user holdout."""
    return split_leave_one_out(dataset.events, holdout_share=config.cold_user_share,
                               holdout_seed=config.cold_user_seed, targets=target_behaviors(dataset, config))


def make_view(name: str, events: pd.DataFrame, users: list[str], targets: pd.DataFrame,
              vocab: ItemVocab) -> SliceView:
    """A slice of `users` shown `events`, predicting the one row per user of `targets`."""
    t = targets.assign(user_id=targets["user_id"].astype(str)).set_index("user_id")
    seqs = user_sequences(events, vocab)
    empty = np.zeros(0, dtype=np.int64)
    return SliceView(name, users, np.asarray(vocab.encode(t.loc[users, "item_id"]), dtype=np.int64),
                     [seqs.get(u, empty) for u in users], events[events["user_id"].astype(str).isin(set(users))],
                     pd.Series(t.loc[users, "timestamp"].to_numpy(), index=users, name="as_of"))


def cold_user_views(holdout: pd.DataFrame | None, lengths: Sequence[int], vocab: ItemVocab,
                    target_types: Sequence[str] | None = None) -> dict[str, SliceView]:
    """`cold_user_N`: each held-out user with more than N events, shown the first N, predicting event N+1
    (with `target_types`: the first event from N+1 on whose behaviour is a target)."""
    if holdout is None or holdout.empty:
        return {}
    ev = sort_events(holdout)
    ev = ev.assign(user_id=ev["user_id"].astype(str))
    position = ev.groupby("user_id", sort=False).cumcount().to_numpy()  # 0 = first event
    is_target = np.ones(len(ev), dtype=bool) if target_types is None else ev["behavior"].isin(target_types).to_numpy()
    out = {}
    for n in lengths:
        later = ev[is_target & (position >= n)]
        targets = later[~later["user_id"].duplicated()]  # each user's first target from position n on
        users = sorted(targets["user_id"].unique(), key=_user_key)
        out[f"cold_user_{n}"] = make_view(f"cold_user_{n}", ev[(position < n) & ev["user_id"].isin(set(users))
                                                               ].reset_index(drop=True), users, targets, vocab)
    return out


def _user_key(u: str) -> tuple:
    return (0, int(u), u) if u.isdigit() else (1, 0, u)


def build_protocol(dataset: Dataset, config: EvaluateConfig, split: Split | None = None) -> Protocol:
    """The split, the slices and the long-tail set; built once, shared by every row."""
    split = split or split_for(dataset, config)
    vocab = ItemVocab.from_items(dataset.items)
    test = split.targets("test")
    users = sample_users([str(u) for u in test["user_id"]], config.max_users, config.sample_seed)
    visible = split.history("test")
    visible = visible[visible["user_id"].astype(str).isin(set(users))].reset_index(drop=True)
    tail = long_tail_by_mass(np.bincount(vocab.encode(split.train["item_id"]), minlength=vocab.size),
                             config.long_tail_mass)
    slices = {"all": make_view("all", visible, users, test, vocab)}
    slices["valid"] = make_view("valid", split.train[split.train["user_id"].astype(str).isin(set(users))],
                                users, split.targets("valid"), vocab)
    for n in config.short_lengths:
        slices[f"short_{n}"] = make_view(f"short_{n}", truncate_history(visible, n), users, test, vocab)
    slices.update(cold_user_views(split.holdout, config.cold_lengths, vocab, target_behaviors(dataset, config)))
    tail_set = set(tail.tolist())
    targets = dict(zip(slices["all"].users, slices["all"].targets.tolist()))
    slices["long_tail"] = make_view("long_tail", visible, [u for u in users if targets[u] in tail_set], test, vocab)
    return Protocol(split=split, vocab=vocab, slices=slices, long_tail=tail, k=config.k)


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """[U] per-user NDCG@k of one relevant item (their mean is `llmrec.metrics.ndcg_at_k`)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def score_view(scorer: SequenceScorer, view: SliceView, protocol: Protocol, batch_size: int = 256) -> SliceScore:
    """The five metrics of one scorer on one slice, plus NDCG per user (the scorer sees `view.histories` only)."""
    k, n = protocol.k, len(view.users)
    ranks = np.empty(n, dtype=np.int64)
    tops = np.zeros((n, k), dtype=np.int64)
    for s in range(0, n, batch_size):
        hist, users = view.histories[s:s + batch_size], view.users[s:s + batch_size]
        scores = check_scores(scorer.score(hist, users), len(users), protocol.vocab.size, getattr(scorer, "name", "?"))
        ranks[s:s + len(users)] = target_ranks(scores, view.targets[s:s + batch_size], hist)
        tops[s:s + len(users)] = topk(scores, hist, k)
    if n == 0:
        return SliceScore({}, {})
    metrics = {f"ndcg@{k}": ndcg_at_k(ranks, k), f"hr@{k}": hr_at_k(ranks, k), "mrr": mrr(ranks),
               f"coverage@{k}": coverage_at_k(tops, protocol.vocab.size - 1),
               f"long_tail_share@{k}": long_tail_share_at_k(tops, protocol.long_tail)}
    return SliceScore(metrics, dict(zip(map(user_key, view.users), ndcg_gains(ranks, k).tolist())))


def score_slice(scorer: SequenceScorer, view: SliceView, protocol: Protocol, batch_size: int = 256) -> dict[str, float]:
    """The five metrics of one scorer on one slice."""
    return score_view(scorer, view, protocol, batch_size).metrics
