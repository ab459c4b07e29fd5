"""Tag yardsticks that can fail: do a user's tags, on their own, single out the next item?

RecGPT's tag HR@k (`legacy_tag_hr`) counts a hit when one of the user's top-k tags names attributes the next
item has. A constant list of broad tags ("90s movies", "dramas", ...) passes that test for almost every
user, so it measures nothing. The measures here reward tags for being specific and personal:

- tag-to-item retrieval (`match_scores` + `retrieval_metrics`): the tags alone rank the whole catalogue.
  An item's score is the number of the user's tags whose attributes it has (all of them, as in a hit).
  Ties stay pessimistic (`llmrec.metrics.target_ranks`: the target ranks below every item with its score),
  so a tag that matches half the catalogue earns nothing. Ties are deliberately NOT broken by popularity:
  that turns a single broad tag into a popularity ranker, and on ML-100K "1990s drama" alone then beats
  every user's own history tags (HR@50 0.140 vs 0.130). A trained tag tower is scored the same way from its
  [B, V] scores. NDCG@10 and HR@50 of the next item, the items the user has seen excluded.
- specificity-weighted hit (`specificity_hit`): per user, the largest -ln(share of catalogue items the tag
  matches) over the top-k tags that hit the next item, 0 when none hits. In nats; on ML-100K "1990s" 0.23,
  "drama" 0.84, "romantic comedy" 2.85, "noir mystery" 5.48. Averaged over users.
- novel hit (`novel_hit_rate`): share of users for whom a top-k tag hits the next item while its attribute
  combination is carried by no item of their visible history: a hit the history alone could not have
  suggested. History-derived tags score 0 here by construction.

Every row is judged on its first k tags (LLM answers carry at most `MiningConfig.max_tags`, 10 by default),
so a heuristic cannot win by listing more tags. The tag -> attribute and item -> attribute mappings are
parameters (`TagCatalogue`), so these measures serve any attribute vocabulary. Items are referred to by
their `llmrec.data.ItemVocab` index (1..N, 0 = padding).

Fallback accounting (`source_shares`, `profile_shares`): the share of users whose tags came from a validated
LLM answer ("llm"), from the flagged fallback ("fallback") or from a non-LLM heuristic ("heuristic"). Every
LLM-tag row records "llm_share" and "fallback_share" next to its metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llmrec.errors import DataError
from llmrec.metrics import hr_at_k, ndcg_at_k, target_ranks
from llmrec.schema import Item

TagAttributes = Callable[[str], "frozenset[str] | None"]  # None or empty: the tag names no attribute
ItemAttributes = Callable[[Item], frozenset[str]]
RETRIEVAL_KS = {"ndcg": 10, "hr": 50}
SOURCES = ("llm", "fallback", "heuristic")


@dataclass
class TagCatalogue:
    """The catalogue's attributes, indexed once: which items each tag matches, and how specific it is.

    `item_attrs[n]` are the attributes of the item with vocabulary index n (index 0, padding, has none).
    """

    item_attrs: tuple[frozenset[str], ...]
    tag_attributes: TagAttributes
    _by_attr: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # attribute -> [V] bool
    _tag_cache: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    _match_cache: dict[frozenset[str], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, items: Sequence[Item], item_attributes: ItemAttributes,
              tag_attributes: TagAttributes) -> TagCatalogue:
        """`items` in vocabulary order (items[0] gets index 1)."""
        if not items:
            raise DataError("a tag catalogue needs at least one item")
        attrs = (frozenset(),) + tuple(frozenset(item_attributes(it)) for it in items)
        cat = cls(item_attrs=attrs, tag_attributes=tag_attributes)
        for n, a in enumerate(attrs):
            for attr in a:
                cat._by_attr.setdefault(attr, np.zeros(len(attrs), dtype=bool))[n] = True
        return cat

    @property
    def size(self) -> int:
        """Columns of a score matrix: N items + padding."""
        return len(self.item_attrs)

    def attrs(self, tag: str) -> frozenset[str]:
        """The attributes `tag` names (empty when it names none)."""
        if tag not in self._tag_cache:
            self._tag_cache[tag] = frozenset(self.tag_attributes(tag) or ())
        return self._tag_cache[tag]

    def matches(self, tag: str) -> np.ndarray:
        """[V] bool: the items that have every attribute the tag names; none for a tag that names nothing."""
        key = self.attrs(tag)
        if key not in self._match_cache:
            hit = np.zeros(self.size, dtype=bool)
            if key:
                hit[:] = True
                for attr in key:
                    hit &= self._by_attr.get(attr, np.zeros(self.size, dtype=bool))
            self._match_cache[key] = hit
        return self._match_cache[key]

    def hits(self, tag: str, item: int) -> bool:
        """True when the tag names at least one attribute and item index `item` has all of them."""
        return bool(self.matches(tag)[item])

    def specificity(self, tag: str) -> float:
        """-ln(share of catalogue items the tag matches); 0 for a tag that matches nothing (it never hits)."""
        n = int(self.matches(tag).sum())
        return -math.log(n / (self.size - 1)) if n else 0.0


def match_scores(user_tags: Sequence[Sequence[str]], catalogue: TagCatalogue) -> np.ndarray:
    """[B, V] float: per user, how many of their tags each item matches (column 0, padding, is -inf)."""
    scores = np.zeros((len(user_tags), catalogue.size), dtype=np.float64)  # [B, V]
    for b, tags in enumerate(user_tags):
        for tag in dict.fromkeys(tags):  # a repeated tag counts once
            scores[b] += catalogue.matches(tag)
    scores[:, 0] = -np.inf
    return scores


def retrieval_metrics(scores: np.ndarray, targets: np.ndarray, seen: Sequence[np.ndarray],
                      prefix: str = "tag") -> dict[str, float]:
    """NDCG@10 and HR@50 of the next item under `scores` [B, V], seen items excluded (`llmrec.metrics`)."""
    ranks = target_ranks(scores, np.asarray(targets), seen)
    return {f"{prefix}_ndcg@{RETRIEVAL_KS['ndcg']}": ndcg_at_k(ranks, RETRIEVAL_KS["ndcg"]),
            f"{prefix}_hr@{RETRIEVAL_KS['hr']}": hr_at_k(ranks, RETRIEVAL_KS["hr"])}


def _check(user_tags: Sequence, targets: Sequence, k: int) -> None:
    if len(user_tags) != len(targets):
        raise ValueError(f"user_tags has {len(user_tags)} users but targets has {len(targets)}")
    if not user_tags:
        raise ValueError("tag metrics need at least one user")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def legacy_tag_hr(user_tags: Sequence[Sequence[str]], targets: Sequence[int], catalogue: TagCatalogue,
                  k: int) -> float:
    """LEGACY (RecGPT) tag HR@k: share of users with a top-k tag that hits the next item. Broad tags pass it."""
    _check(user_tags, targets, k)
    return float(np.mean([any(catalogue.hits(t, n) for t in tags[:k]) for tags, n in zip(user_tags, targets)]))


def specificity_hit(user_tags: Sequence[Sequence[str]], targets: Sequence[int], catalogue: TagCatalogue,
                    k: int) -> float:
    """Mean over users of the largest specificity (nats) among their top-k tags that hit the next item."""
    _check(user_tags, targets, k)
    best = [max((catalogue.specificity(t) for t in tags[:k] if catalogue.hits(t, n)), default=0.0)
            for tags, n in zip(user_tags, targets)]
    return float(np.mean(best))


def novel_hit_rate(user_tags: Sequence[Sequence[str]], targets: Sequence[int], seen: Sequence[np.ndarray],
                   catalogue: TagCatalogue, k: int) -> float:
    """Share of users with a top-k tag that hits the next item and no item of their visible history."""
    _check(user_tags, targets, k)
    if len(seen) != len(targets):
        raise ValueError(f"seen has {len(seen)} users but targets has {len(targets)}")
    novel = [any(catalogue.hits(t, n) and not catalogue.matches(t)[np.asarray(h, dtype=np.int64)].any()
                 for t in tags[:k])
             for tags, n, h in zip(user_tags, targets, seen)]
    return float(np.mean(novel))


def tag_metrics(user_tags: Sequence[Sequence[str]], targets: Sequence[int], seen: Sequence[np.ndarray],
                catalogue: TagCatalogue, k: int = 10,
                tower: Callable[[Sequence[Sequence[str]]], np.ndarray] | None = None) -> dict[str, float]:
    """Every tag yardstick for one row of users over their first k tags, keyed by metric name.

    `tower`, when given, maps the users' tag lists to [B, V] item scores (a trained tag tower); its
    retrieval figures are reported as tower_ndcg@10 / tower_hr@50.
    """
    _check(user_tags, targets, k)
    lists = [list(t)[:k] for t in user_tags]
    out = retrieval_metrics(match_scores(lists, catalogue), np.asarray(targets), seen, "tag")
    if tower is not None:
        out.update(retrieval_metrics(np.asarray(tower(lists), dtype=np.float64), np.asarray(targets), seen,
                                     "tower"))
    out[f"specificity_hit@{k}"] = specificity_hit(lists, targets, catalogue, k)
    out[f"novel_hit@{k}"] = novel_hit_rate(lists, targets, seen, catalogue, k)
    out[f"legacy_tag_hr@{k}"] = legacy_tag_hr(lists, targets, catalogue, k)
    return out


def source_shares(sources: Iterable[str]) -> dict[str, float]:
    """llm_share, fallback_share, heuristic_share of users by profile source; an unknown source is an error."""
    counts = dict.fromkeys(SOURCES, 0)
    for r, s in enumerate(sources):
        if s not in counts:
            raise DataError(f"row {r}: profile source {s!r} is not one of {SOURCES}")
        counts[s] += 1
    total = sum(counts.values())
    if total == 0:
        raise DataError("no profile to count sources over")
    return {f"{s}_share": counts[s] / total for s in SOURCES}


def tag_sources(path: str | Path) -> dict[str, str]:
    """user_id -> profile source of a mined-tags Parquet; a table without a `source` column maps every user to
    "unknown" (never to "llm")."""
    table = pq.read_table(path)
    users = [str(u) for u in table["user_id"].to_pylist()]
    if "source" not in table.column_names:
        return dict.fromkeys(users, "unknown")
    return dict(zip(users, (str(x) for x in table["source"].to_pylist())))


def profile_shares(table: pa.Table | Mapping[str, Sequence[str]]) -> dict[str, float]:
    """`source_shares` of a profiles/tags table (`llmrec.interests.PROFILES_SCHEMA`, column "source")."""
    names = table.column_names if isinstance(table, pa.Table) else list(table)
    if "source" not in names:
        raise DataError(f"tags table has no 'source' column (columns: {sorted(names)}); re-mine it with "
                        "`llmrec mine-interests` so each user's tags say whether the LLM produced them")
    column = table["source"]
    return source_shares(column.to_pylist() if isinstance(column, (pa.ChunkedArray, pa.Array)) else column)
