"""Types that pass between pipeline stages.

Single records at API boundaries are pydantic models; bulk data moves as pandas/pyarrow tables whose
columns are defined once here (EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS) and checked by `data.py`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

# --- Canonical bulk tables -------------------------------------------------------------------------

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("behavior", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=True),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("genres", pa.list_(pa.string()), nullable=False),
        pa.field("year", pa.int32(), nullable=True),
        pa.field("text", pa.string(), nullable=True),
        pa.field("brand", pa.string(), nullable=True),  # brand, publisher, studio: whatever makes the item
    ]
)
# Users: user_id plus any profile columns (all strings), e.g. age, gender, occupation for ML-100K.
USER_ID_FIELD = pa.field("user_id", pa.string(), nullable=False)

EVENT_COLUMNS = tuple(EVENTS_SCHEMA.names)
ITEM_COLUMNS = tuple(ITEMS_SCHEMA.names)


class Record(BaseModel):
    """Base for records: immutable, unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- Single records ------------------------------------------------------------------------------


class Event(Record):
    """One user-item interaction. `behavior` is free text ("liked", "watched", "purchased", ...)."""

    user_id: str
    item_id: str
    timestamp: datetime
    behavior: str = Field(min_length=1)
    value: float | None = None

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, ts: datetime) -> datetime:
        # Naive timestamps are taken as UTC so that comparisons with `as_of` never raise.
        return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


class Item(Record):
    item_id: str
    title: str
    genres: tuple[str, ...] = ()
    year: int | None = None
    text: str | None = None
    brand: str | None = None


class Domain(Record):
    """What a dataset's items and users are called, so prompts and explanations never assume movies."""

    item: str = "item"  # "movie", "magazine", ...
    items: str = "items"
    user: str = "user"  # "viewer", "reader", ...


class UserHistory(Record):
    """A user's events in time order, with an optional profile (age, gender, occupation, ...)."""

    user_id: str
    events: tuple[Event, ...] = ()
    profile: dict[str, str] = Field(default_factory=dict)


class Narrative(Record):
    """A user's history compressed into text under a token budget (see `llmrec.narrative`)."""

    user_id: str
    text: str
    as_of: datetime
    n_events_in: int
    n_items_out: int
    n_tokens: int
    max_tokens: int
    item_ids: tuple[str, ...] = ()  # the item of each line of `text`, in line order (empty when unknown)

    @property
    def fits_budget(self) -> bool:
        return self.n_tokens <= self.max_tokens


class Interest(Record):
    """A user interest mined by the LLM, grounded in items of the narrative."""

    name: str = Field(min_length=1)
    evidence: tuple[str, ...] = ()
    why: str = ""


class Tag(Record):
    """A "modifier + core" tag (e.g. "dark sci-fi") that serves one interest."""

    text: str = Field(min_length=1)
    interest: str | None = None
    reason: str = ""


class InterestProfile(Record):
    """What the LLM (or a heuristic) says about one user: interests and retrieval tags.

    `source` is "llm" for validated model output, "fallback" when the model failed twice and a flagged
    heuristic stood in, and "heuristic" for non-LLM baselines.
    """

    user_id: str
    interests: tuple[Interest, ...] = ()
    tags: tuple[Tag, ...] = ()
    source: Literal["llm", "fallback", "heuristic"] = "llm"
    model: str = ""


class Explanation(Record):
    interest: str
    item_id: str
    text: str
    faithful: bool
    flagged: bool = False
    evidence: tuple[str, ...] = ()  # ids of the user's history items the text cites (explain.facts)


class Recommendation(Record):
    """One recommended item, why it was chosen and where the candidate came from."""

    item: Item
    score: float
    interest: str | None = None
    tag: str | None = None
    explanation: str | None = None
    explanation_flagged: bool = False  # True when a template stood in for an LLM explanation
    source: Literal["user_tower", "tag_tower", "cold_start", "popularity"] = "user_tower"
