"""Shared fixtures: the real MovieLens-100K (read from ../shared/data or $LLMREC_ML100K_DIR) and a
20-user slice of it, so the whole pipeline's wiring runs in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmrec.data import ML100K_ENV, Dataset, load_ml100k

REPO = Path(__file__).resolve().parents[1]
_DEFAULT_ML100K = REPO.parent / "shared" / "data" / "ml-100k"
if ML100K_ENV not in os.environ and (_DEFAULT_ML100K / "u.data").is_file():
    os.environ[ML100K_ENV] = str(_DEFAULT_ML100K)

TINY_USERS = [str(u) for u in range(1, 21)]


@pytest.fixture(scope="session")
def ml100k() -> Dataset:
    """The full MovieLens-100K, loaded once per test session."""
    return load_ml100k()


@pytest.fixture(scope="session")
def tiny(ml100k: Dataset) -> Dataset:
    """20 real users (ids 1..20) with all their events, and every item of the catalogue."""
    ev = ml100k.events[ml100k.events["user_id"].isin(TINY_USERS)].reset_index(drop=True)
    users = ml100k.users[ml100k.users["user_id"].isin(TINY_USERS)].reset_index(drop=True)
    return Dataset(name="ml-100k-tiny", events=ev, items=ml100k.items, users=users, domain=ml100k.domain)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The real packaged SmolLM2-135M-Instruct as a HF folder, prepared once ($LLMREC_HOME cache, ~1 min cold)."""
    from llmrec.llm.model import prepare_default_model

    return prepare_default_model()
