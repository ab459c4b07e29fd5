"""A dataset's behaviour vocabulary: which event types its log holds, what each one means, and how an
imported `value` column is read.

RecGPT builds its narratives from Taobao's behaviour types (click, favourite, add-to-cart, purchase, search)
and most logs a user brings are implicit feedback of that kind, or play/visit counts, not star ratings. So a
dataset carries a `BehaviorVocab`, saved in its folder's `dataset.json`:

- one `BehaviorSpec` per type: its polarity (positive / neutral / negative), whether it is an item event or a
  search (a query with no item), an optional narrative weight for types the narrative config does not name,
  and whether it counts as an evaluation target (default: the positive item types);
- `value_meaning`: `rating` (thresholded into liked / watched / disliked, the MovieLens and Amazon-review
  path), `count` (plays, visits: a strength, never a dislike) or `none` (ignored).

Common names (click, view, play, favorite, cart, purchase, search, Taobao's pv / fav / buy, the rating words)
have built-in specs; any other name must be declared at import (`--behavior-type NAME=POLARITY[:WEIGHT]`).
An unknown name is an error naming the value and how to declare it, never a guess.

Rating-derived types are all targets, "disliked" included: a rating records that the item was consumed, and
the leave-one-out protocol of the literature (and every ML-100K number reported so far) scores each rated item.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmrec.config import DataConfig, NarrativeConfig
from llmrec.errors import DataError

Polarity = Literal["positive", "neutral", "negative"]
ValueMeaning = Literal["rating", "count", "none"]
VALUE_MEANINGS: tuple[str, ...] = ("rating", "count", "none")
RATING_BEHAVIORS = ("liked", "watched", "disliked")  # ratings_to_behaviors' words, MovieLens and Amazon
# Behaviour names go into narrative text between separators: letters/digits at both ends keep token counts
# additive (the same rule as NarrativeConfig.behavior_weights keys).
_NAME = re.compile(r"[^\W_](?:[\w -]*[^\W_])?")
DECLARE_HINT = ("declare it with --behavior-type NAME=POLARITY[:WEIGHT] (POLARITY positive, neutral or "
                "negative; e.g. --behavior-type {name}=positive:1.5)")


class BehaviorSpec(BaseModel):
    """One behaviour type of a dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    polarity: Polarity
    kind: Literal["item", "search"] = "item"  # search: a query text, no item
    # Narrative weight (None: the common type's, else 1.0); NarrativeConfig.behavior_weights wins for types it names.
    weight: float | None = Field(default=None, gt=0)
    target: bool | None = None  # an evaluation target; None: positive item types are

    @field_validator("name")
    @classmethod
    def _word(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(f"behaviour name {name!r} must be a word (letters, digits, space, '-', '_') that "
                             f"starts and ends with a letter or digit")
        return name

    @property
    def is_target(self) -> bool:
        if self.kind == "search":
            return False
        return self.polarity == "positive" if self.target is None else self.target


def _specs(polarity: Polarity, weight: float, *names: str, **extra) -> dict[str, BehaviorSpec]:
    return {n: BehaviorSpec(name=n, polarity=polarity, weight=weight, **extra) for n in names}


# Weights: the informativeness of one event in a narrative (NarrativeConfig.behavior_weights' scale, whose
# defaults for the rating words and purchased/clicked are the same numbers): a purchase says more than a
# view, a negative signal is shown too (the LLM learns what a user avoids).
COMMON_BEHAVIORS: dict[str, BehaviorSpec] = {
    **_specs("positive", 3.0, "liked", target=True),
    **_specs("neutral", 1.0, "watched", target=True),  # rating-derived: a middling rating still means "consumed"
    **_specs("negative", 2.0, "disliked", target=True),
    **_specs("positive", 3.0, "purchase", "purchased", "buy"),
    **_specs("positive", 2.0, "cart", "add-to-cart", "favorite", "favourite", "fav"),
    **_specs("positive", 1.0, "play", "played"),
    **_specs("positive", 0.5, "click", "clicked"),
    **_specs("neutral", 0.5, "view", "viewed", "pv"),  # Taobao's pv = page view
    **_specs("negative", 2.0, "dislike", "return"),
    **_specs("negative", 0.5, "skip"),
    **_specs("neutral", 1.0, "search", kind="search"),
}


class BehaviorVocab(BaseModel):
    """The behaviour types of one dataset and the meaning of its `value` column (saved with the dataset)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value_meaning: ValueMeaning = "rating"
    specs: tuple[BehaviorSpec, ...] = ()

    @field_validator("specs")
    @classmethod
    def _unique(cls, specs: tuple[BehaviorSpec, ...]) -> tuple[BehaviorSpec, ...]:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"behaviour types are listed twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
        return tuple(sorted(specs, key=lambda s: s.name))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def spec(self, name: str) -> BehaviorSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise DataError(f"behaviour {name!r} is not in the dataset's vocabulary {list(self.names)}")

    def target_names(self, override: Iterable[str] | None = None) -> tuple[str, ...]:
        """Types whose events are evaluation targets: `override` (checked against the vocabulary), else the
        dataset's own (the positive item types; every rating for rating-derived logs)."""
        if override is None:
            return tuple(s.name for s in self.specs if s.is_target)
        chosen = tuple(sorted(set(override)))
        bad = [n for n in chosen if n not in self.names or self.spec(n).kind == "search"]
        if bad or not chosen:
            raise DataError(f"target behaviours {bad or '[]'} are not item behaviours of this dataset; "
                            f"choose among {[s.name for s in self.specs if s.kind == 'item']}")
        return chosen


RATING_VOCAB = BehaviorVocab(value_meaning="rating", specs=tuple(COMMON_BEHAVIORS[n] for n in RATING_BEHAVIORS))


def narrative_weights(config: NarrativeConfig, vocab: BehaviorVocab | None = None) -> dict[str, float]:
    """The narrative's weight per behaviour. A `config.behavior_weights` other than the default is the whole
    intentional set (RecGPT's filter); the default one (also after a JSON round trip) is extended by the
    common types' weights and the dataset's declared ones, so a click/cart/purchase log narrates as is."""
    if config.behavior_weights != NarrativeConfig.model_fields["behavior_weights"].default_factory():
        return dict(config.behavior_weights)
    common = {n: s.weight for n, s in COMMON_BEHAVIORS.items() if s.kind == "item" and s.weight is not None}
    # A type declared without a weight counts like a play (1.0), unless it is a common one.
    declared = {s.name: s.weight or common.get(s.name, 1.0) for s in (vocab.specs if vocab else ()) if s.kind == "item"}
    return {**common, **declared, **config.behavior_weights}


# The words for what a user did, per behaviour type that names an act better than the domain's "watch" / "pick":
# the prompts' take / takes / taken (cold start asks which items a new user "buys first") and the explanations'
# clause ("You bought {items}"). The rating words have none: rating datasets keep their words ("You liked").
BEHAVIOR_VERBS: dict[str, tuple[str, str, str, str]] = {
    **dict.fromkeys(("purchase", "purchased", "buy"), ("buy", "buys", "bought", "bought {}")),
    **dict.fromkeys(("play", "played"), ("play", "plays", "played", "played {}")),
    **dict.fromkeys(("click", "clicked"), ("click", "clicks", "clicked", "clicked {}")),
    **dict.fromkeys(("view", "viewed", "pv"), ("view", "views", "viewed", "viewed {}")),
    **dict.fromkeys(("cart", "add-to-cart"), ("add to the cart", "adds to the cart", "added to the cart",
                                             "added {} to your cart")),
    **dict.fromkeys(("favorite", "favourite", "fav"), ("save", "saves", "saved", "saved {}")),
}
LIKED_CLAUSE = "liked {}"  # types without verbs (the rating words, declared custom types)


def explain_clause(behavior: str | None) -> str:
    """"bought {}" for a purchase, "liked {}" for the rating words and types without verbs (a format string)."""
    verbs = BEHAVIOR_VERBS.get(behavior or "")
    return verbs[3] if verbs else LIKED_CLAUSE


def main_positive(vocab: BehaviorVocab | None) -> str:
    """The dataset's main positive item type: the positive one with the largest weight (ties: name), e.g.
    "liked" for ratings, "purchase" for a view/cart/purchase log, "play" for a play-count log. None: the rating
    vocabulary (a dataset or folder from before vocabularies). A log without a positive type has its first
    target type, else none at all: an error."""
    vocab = vocab or RATING_VOCAB
    positive = [s for s in vocab.specs if s.kind == "item" and s.polarity == "positive"]
    if positive:
        weight = {s.name: s.weight or (COMMON_BEHAVIORS[s.name].weight if s.name in COMMON_BEHAVIORS else None) or 1.0
                  for s in positive}
        return min(positive, key=lambda s: (-weight[s.name], s.name)).name
    targets = vocab.target_names()
    if not targets:
        raise DataError(f"the behaviour vocabulary {list(vocab.names)} has no positive or target item type; "
                        + DECLARE_HINT.format(name="NAME"))
    return targets[0]


def training_events(events: pd.DataFrame, vocab: BehaviorVocab | None) -> pd.DataFrame:
    """The events retrieval may train on as positives: all but those of negative types that are no target
    (skip, return, dislike: a sequence model would learn to recommend what the user turned down). A rating's
    "disliked" is a target (see the module docstring) and stays, so a rating log's events come back as they
    are (the same frame). Narratives still show the negative events: the LLM learns what a user avoids."""
    if vocab is None:
        return events
    negative = [s.name for s in vocab.specs if s.kind == "item" and s.polarity == "negative" and not s.is_target]
    if not negative:
        return events
    return events[~events["behavior"].isin(negative).to_numpy()].reset_index(drop=True)


def parse_behavior_types(spec: str | None) -> dict[str, BehaviorSpec]:
    """`wishlist=positive:2,skip=negative` -> declared specs (`search` as polarity declares a search type)."""
    out: dict[str, BehaviorSpec] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, sep, rest = part.partition("=")
        polarity, _, weight = rest.partition(":")
        polarity = polarity.strip()
        if not sep or polarity not in ("positive", "neutral", "negative", "search"):
            raise ValueError(f"--behavior-type entry {part!r} is not NAME=POLARITY[:WEIGHT] with POLARITY "
                             f"positive, neutral, negative or search")
        try:
            w = float(weight) if weight.strip() else None
        except ValueError:
            raise ValueError(f"--behavior-type entry {part!r}: weight {weight!r} is not a number") from None
        kind = "search" if polarity == "search" else "item"
        out[name.strip()] = BehaviorSpec(name=name.strip(), polarity="neutral" if kind == "search" else polarity,
                                         kind=kind, weight=w)
    return out


def vocab_for(counts: dict[str, int], value_meaning: ValueMeaning, declared: dict[str, BehaviorSpec] | None = None,
              where: str = "events") -> BehaviorVocab:
    """The vocabulary of the behaviour names in `counts` (name -> events): declared specs first, then the
    common ones; an unknown name is an error that names it, its count and how to declare it."""
    declared = dict(declared or {})
    unknown = {n: c for n, c in counts.items() if n not in declared and n not in COMMON_BEHAVIORS}
    if unknown:
        listed = ", ".join(f"{n!r} ({c} events)" for n, c in sorted(unknown.items()))
        first = min(unknown)
        raise DataError(f"{where}: unknown behaviour type(s) {listed}; " + DECLARE_HINT.format(name=first))
    specs = {**{n: COMMON_BEHAVIORS[n] for n in counts if n in COMMON_BEHAVIORS}, **declared}
    return BehaviorVocab(value_meaning=value_meaning, specs=tuple(specs.values()))


def vocab_from_events(events: pd.DataFrame, value_meaning: ValueMeaning = "rating") -> BehaviorVocab:
    """A dataset without a saved vocabulary (built in code, or written before vocabularies existed): its names
    must all be common ones."""
    return vocab_for(events["behavior"].value_counts().to_dict(), value_meaning)


def ratings_to_behaviors(ratings: np.ndarray, config: DataConfig) -> np.ndarray:
    """Ratings -> liked (>= like_threshold) / disliked (<= dislike_threshold) / watched (in between)."""
    return np.where(
        ratings >= config.like_threshold, "liked", np.where(ratings <= config.dislike_threshold, "disliked", "watched")
    )


# --- Import: where an events table's behaviour comes from ----------------------------------------

QUERY_COLUMNS = ("user_id", "timestamp", "query")  # a dataset's search events (`Dataset.queries`)


class EventMeaning(BaseModel):
    """How `llmrec data import` reads an events table's behaviour and value (the import flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value_meaning: ValueMeaning | None = None  # required when the table has a value column
    behavior: str | None = None  # one type for every event (a single-type log)
    declared: dict[str, BehaviorSpec] = Field(default_factory=dict)  # --behavior-type NAME=POLARITY[:WEIGHT]


_VALUE_CHOICE = ("pass --value-meaning rating (a star rating, thresholded into liked/watched/disliked), count "
                 "(plays, visits, purchases: a strength, never a dislike) or none (ignore the column)")


def behavior_source(path, columns: dict, how: EventMeaning, column_of) -> Literal["rating", "column", "constant"]:
    """Where each event's behaviour comes from: a rating (`value`), a behaviour column, or the constant
    `how.behavior`. A behaviour column wins over a rating, which is then kept in `value` as it is (a log
    exported from a dataset folder). Every ambiguous or undeclared combination is an error naming the flag
    that settles it."""
    has_value, has_column = "value" in columns, "behavior" in columns
    if has_value and how.value_meaning is None:
        raise DataError(f"{path}: column {column_of('value')!r} (canonical 'value') holds numbers whose meaning "
                        f"is not declared; {_VALUE_CHOICE}")
    if how.value_meaning in ("rating", "count") and not has_value:
        raise DataError(f"{path}: --value-meaning {how.value_meaning} needs a value column, none named "
                        f"{column_of('value')!r}; map it with --map value=<column>")
    if how.value_meaning == "rating" and not has_column:
        if how.behavior:
            raise DataError(f"{path}: with --value-meaning rating the behaviour is derived from the rating; drop "
                            f"--behavior {how.behavior!r}, or declare the value as count or none")
        return "rating"
    if how.behavior and has_column:
        raise DataError(f"{path}: both --behavior {how.behavior!r} and a behaviour column "
                        f"{column_of('behavior')!r}; give one")
    if how.behavior:
        return "constant"
    if has_column:
        return "column"
    raise DataError(f"{path}: no behaviour for the events: map a behaviour column with --behavior-column COL, "
                    f"give one type for every event with --behavior NAME, or derive liked/watched/disliked from a "
                    f"rating with --map value=<column> --value-meaning rating")


def check_search_rows(path, columns: dict, search: np.ndarray) -> pd.Series:
    """The query text of a table that holds search events (a search is a query with no item)."""
    if "query" not in columns:
        raise DataError(f"{path}: {int(search.sum())} search events but no query column; map it with "
                        f"--map query=<column>")
    return columns["query"]
