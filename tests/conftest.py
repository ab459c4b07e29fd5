"""Shared fixtures.

`ml100k` and `tiny` serve a small *synthetic* dataset written in the real MovieLens-100K raw format and read
by the real loader, so the default test run is the same on every machine, with or without ../shared.
Tests of real ML-100K facts take `real_ml100k`, which reads $LLMREC_ML100K_DIR or ../shared/data/ml-100k
and skips otherwise. LLMREC_TEST_NO_REAL_DATA=1 hides the real data, to rehearse a machine without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from llmrec.data import ML100K_ENV, ML100K_GENRES, Dataset, load_ml100k
from llmrec.data.datasets import SYNTHETIC_MARKER

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NO_REAL_DATA_ENV = "LLMREC_TEST_NO_REAL_DATA"
# Where the user pointed the real ML-100K, read before the session points the variable at the synthetic set.
_REAL_ML100K_ENV = os.environ.get(ML100K_ENV)

TINY_USERS = [str(u) for u in range(1, 21)]

# A few real ML-100K rows keep their ids, so tests can name "Toy Story" (item 1) or user 1 (24, M, technician).
_ANCHOR_ITEMS = {
    1: ("Toy Story (1995)", "01-Jan-1995", ("Animation", "Children's", "Comedy")),
    2: ("GoldenEye (1995)", "01-Jan-1995", ("Action", "Adventure", "Thriller")),
    3: ("Four Rooms (1995)", "01-Jan-1995", ("Thriller",)),
    4: ("Get Shorty (1995)", "01-Jan-1995", ("Action", "Comedy", "Drama")),
    5: ("Copycat (1995)", "01-Jan-1995", ("Crime", "Drama", "Thriller")),
    50: ("Star Wars (1977)", "01-Jan-1977", ("Action", "Adventure", "Romance", "Sci-Fi", "War")),
    100: ("Fargo (1996)", "14-Feb-1997", ("Crime", "Drama", "Thriller")),
    181: ("Return of the Jedi (1983)", "14-Mar-1997", ("Action", "Adventure", "Romance", "Sci-Fi", "War")),
}
_ANCHOR_USERS = {1: ("24", "M", "technician"), 2: ("53", "F", "other"), 3: ("23", "M", "writer"),
                 4: ("24", "M", "technician"), 5: ("33", "F", "other")}
_WORDS = ("Night", "River", "Glass", "Summer", "Stranger", "City", "Last", "Dream", "Iron", "Silent", "Blue",
          "House", "Road", "Winter", "Secret", "Heart", "Shadow", "King", "Storm", "Garden")  # fmt: skip
_OCCUPATIONS = ("student", "engineer", "educator", "programmer", "librarian", "writer", "artist", "other",
                "administrator", "technician", "executive", "healthcare")  # fmt: skip


def write_synthetic_ml100k(root: Path, n_users: int = 60, n_items: int = 200, seed: int = 0) -> Path:
    """Write u.data, u.item, u.user, u.genre in ML-100K's raw format: users with 2-3 favourite genres rate
    15-60 items each over 1996-1999, preferring popular items of their genres (so models have signal)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    genres = ML100K_GENRES[1:]  # "unknown" stays unused, as in the real file
    item_genres, lines = [], []
    for i in range(1, n_items + 1):
        if i in _ANCHOR_ITEMS:
            title, date, gs = _ANCHOR_ITEMS[i]
        else:
            year = int(rng.integers(1930, 1999))
            title = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} ({year})"
            date = f"01-Jan-{year}"
            gs = tuple(rng.choice(genres, size=int(rng.integers(1, 4)), replace=False))
        item_genres.append(set(gs))
        flags = "|".join("1" if g in gs else "0" for g in ML100K_GENRES)
        lines.append(f"{i}|{title}|{date}||http://us.imdb.com/M/title-exact?x|{flags}")
    (root / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (root / "u.genre").write_text("".join(f"{g}|{n}\n" for n, g in enumerate(ML100K_GENRES)) + "\n")
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.7  # Zipf-like: low ids are the hits
    users, ratings = [], []
    start, span = 820_454_400, 4 * 365 * 86_400  # 1996-01-01, four years
    for u in range(1, n_users + 1):
        age, gender, occ = _ANCHOR_USERS.get(u, (str(rng.integers(15, 70)), rng.choice(["M", "F"]),
                                                  rng.choice(_OCCUPATIONS)))
        users.append(f"{u}|{age}|{gender}|{occ}|{10000 + u}")
        fav = set(rng.choice(genres, size=int(rng.integers(2, 4)), replace=False))
        match = np.array([len(g & fav) for g in item_genres], dtype=float)
        weights = popularity * (0.2 + match)
        n = int(rng.integers(15, 61))
        picked = rng.choice(n_items, size=n, replace=False, p=weights / weights.sum())
        t0 = start + int(rng.integers(0, span // 2))
        times = np.sort(t0 + rng.integers(0, span // 2, size=n))
        for item, ts in zip(picked, times):
            rating = int(np.clip(round(2.5 + match[item] + rng.normal(0, 0.8)), 1, 5))
            ratings.append(f"{u}\t{item + 1}\t{rating}\t{ts}")
    order = rng.permutation(len(ratings))  # the real u.data is not sorted either
    (root / "u.data").write_text("\n".join(ratings[i] for i in order) + "\n")
    (root / "u.user").write_text("\n".join(users) + "\n")
    (root / SYNTHETIC_MARKER).write_text("generated by tests/conftest.py: not the real MovieLens-100K\n")
    return root


@pytest.fixture(scope="session")
def synthetic_ml100k_dir(tmp_path_factory) -> Path:
    """A folder of synthetic ML-100K raw files (u.data, u.item, u.user, u.genre)."""
    return write_synthetic_ml100k(tmp_path_factory.mktemp("synthetic-ml-100k"))


@pytest.fixture(scope="session", autouse=True)
def _synthetic_ml100k_env(synthetic_ml100k_dir: Path):
    """`--dataset ml-100k` (the CLI default) reads the synthetic set in every test, real data or not."""
    before = os.environ.get(ML100K_ENV)
    os.environ[ML100K_ENV] = str(synthetic_ml100k_dir)
    yield
    if before is None:
        os.environ.pop(ML100K_ENV, None)
    else:
        os.environ[ML100K_ENV] = before


@pytest.fixture(scope="session")
def ml100k(synthetic_ml100k_dir: Path) -> Dataset:
    """MovieLens-shaped data (60 users, 200 items), read by the real ML-100K loader without its count check."""
    return load_ml100k(synthetic_ml100k_dir, expected=None)


@pytest.fixture(scope="session")
def tiny(ml100k: Dataset) -> Dataset:
    """20 users (ids 1..20) with all their events, and every item of the catalogue."""
    ev = ml100k.events[ml100k.events["user_id"].isin(TINY_USERS)].reset_index(drop=True)
    users = ml100k.users[ml100k.users["user_id"].isin(TINY_USERS)].reset_index(drop=True)
    return Dataset(name="ml-100k-tiny", events=ev, items=ml100k.items, users=users, domain=ml100k.domain)


def real_data_dir(configured: str | None, default: Path, marker: str) -> Path | None:
    """The real data folder `configured` (an env value) or `default` if it holds `marker` and is not the
    synthetic set, unless LLMREC_TEST_NO_REAL_DATA=1."""
    if os.environ.get(NO_REAL_DATA_ENV) == "1":
        return None
    path = Path(configured).expanduser() if configured else default
    return path if (path / marker).is_file() and not (path / SYNTHETIC_MARKER).is_file() else None


@pytest.fixture(scope="session")
def real_ml100k_dir() -> Path:
    path = real_data_dir(_REAL_ML100K_ENV, SHARED_DATA / "ml-100k", "u.data")
    if path is None:
        pytest.skip(f"real MovieLens-100K not available: set {ML100K_ENV} to a folder with u.data "
                    f"(or place it at {SHARED_DATA / 'ml-100k'})")
    return path


@pytest.fixture(scope="session")
def real_ml100k(real_ml100k_dir: Path) -> Dataset:
    """The full real MovieLens-100K (checked against 943 users / 1,682 items / 100,000 ratings)."""
    return load_ml100k(real_ml100k_dir)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The real packaged SmolLM2-135M-Instruct as a HF folder, prepared once ($LLMREC_HOME cache, ~1 min cold)."""
    from llmrec.llm.model import prepare_default_model

    return prepare_default_model()


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """A CLI run configures the root logger (level, a handler on that run's stderr): undo it after each test
    so no test inherits another's level or writes to a finished run's stream."""
    import logging

    root = logging.getLogger()
    level, before = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in [h for h in root.handlers if h not in before]:  # pytest's own capture handlers stay
        root.removeHandler(handler)
