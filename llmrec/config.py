"""Typed, frozen stage configs; they combine into one root `RecommenderConfig`.

Every config is a pydantic model with `frozen=True, extra="forbid"`: a mistyped key is an error that names
the key, and a bad value is an error that names the field, the value and what is allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StageConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Self:
        return cls.model_validate_json(Path(path).read_text())


class DataConfig(StageConfig):
    """How raw ratings become behaviours, and how the evaluation split is cut."""

    dataset: str = "ml-100k"
    like_threshold: float = 4.0  # rating >= this -> "liked"
    dislike_threshold: float = 2.0  # rating <= this -> "disliked"; in between -> "watched"
    min_events_for_split: int = Field(default=3, ge=3)

    @model_validator(mode="after")
    def _thresholds(self) -> Self:
        if self.dislike_threshold >= self.like_threshold:
            raise ValueError(
                f"dislike_threshold ({self.dislike_threshold}) must be below like_threshold ({self.like_threshold})"
            )
        return self


class NarrativeConfig(StageConfig):
    """RecGPT-style history compression (see `llmrec.narrative`)."""

    # Behaviours kept as intentional, with their weight in the informativeness score; others are dropped.
    behavior_weights: dict[str, float] = Field(
        default_factory=lambda: {"liked": 3.0, "disliked": 2.0, "watched": 1.0, "purchased": 3.0, "clicked": 0.5}
    )
    recent_days: int = Field(default=30, ge=1)  # day-by-day buckets within this window
    monthly_days: int = Field(default=365, ge=1)  # month-by-month within this window, year-by-year beyond
    max_tokens: int = Field(default=1024, ge=32)
    max_pairs_per_item: int = Field(default=4, ge=1)  # (time, behaviour) pairs kept per item entry
    max_genres: int = Field(default=3, ge=0)  # attributes rendered per item

    @model_validator(mode="after")
    def _weights(self) -> Self:
        if not self.behavior_weights:
            raise ValueError("behavior_weights must keep at least one behaviour type")
        bad = {k: v for k, v in self.behavior_weights.items() if v <= 0}
        if bad:
            raise ValueError(f"behavior_weights must be positive, got {bad}")
        if self.monthly_days <= self.recent_days:
            raise ValueError(f"monthly_days ({self.monthly_days}) must exceed recent_days ({self.recent_days})")
        return self
