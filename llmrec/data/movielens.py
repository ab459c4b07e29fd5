"""MovieLens releases besides ML-100K, from their raw files: `ml-1m` (`::`-separated .dat, latin-1) and
`ml-latest-small`, `ml-20m`, `ml-25m` (ratings.csv + movies.csv, UTF-8).

Titles carry the year, "Toy Story (1995)": it becomes `year` and leaves the title. Genres are "A|B";
"(no genres listed)" is no genre. Half-star ratings (0.5..5.0) map to behaviours with the same
DataConfig thresholds as ML-100K. Fixed releases are checked against their published counts (STYLE 16);
ml-latest-small is re-released from time to time, so its counts are not pinned.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.config import DataConfig
from llmrec.data.behaviors import RATING_VOCAB
from llmrec.data.datasets import YEAR_SUFFIX, DataError, Dataset, LoadReport, llmrec_home, ratings_to_behaviors
from llmrec.schema import Domain

MOVIELENS_ENV = "LLMREC_MOVIELENS_DIR"
MOVIE_DOMAIN = Domain(item="movie", items="movies", user="viewer")
# name -> (ratings file, movies file, users file or None); the files each release's folder must hold.
FILES = {
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
    "ml-latest-small": ("ratings.csv", "movies.csv", None),
    "ml-20m": ("ratings.csv", "movies.csv", None),
    "ml-25m": ("ratings.csv", "movies.csv", None),
}
# Published counts from each release's README: users, movies (in the movies file), ratings.
EXPECTED = {
    "ml-1m": {"users": 6040, "items": 3883, "events": 1_000_209},
    "ml-20m": {"users": 138_493, "items": 27_278, "events": 20_000_263},
    "ml-25m": {"users": 162_541, "items": 62_423, "events": 25_000_095},
}
# ML-1M users.dat codes (from its README): occupation index -> name.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)  # fmt: skip


def movielens_dir(name: str) -> Path:
    """Folder of a MovieLens release: $LLMREC_MOVIELENS_DIR/<name>, else $LLMREC_HOME/datasets/<name>
    (where `llmrec data download <name>` writes)."""
    marker = FILES[name][0]
    env = os.environ.get(MOVIELENS_ENV)
    candidates = ([Path(env).expanduser() / name, Path(env).expanduser()] if env else []) + [
        llmrec_home() / "datasets" / name]
    for path in candidates:
        if (path / marker).is_file():
            return path
    raise FileNotFoundError(
        f"{name} not found (no {marker} in {[str(p) for p in candidates]}). Run `llmrec data download {name}` "
        f"or set {MOVIELENS_ENV} to a folder holding {name}/"
    )


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    """ML-1M's `::`-separated latin-1 file as strings (the separator is two characters, so it is swapped for a
    tab first: pandas' C reader only takes one-character separators)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = path.read_bytes().decode("latin-1").replace("::", "\t")
    raw = pd.read_csv(io.StringIO(text), sep="\t", header=None, dtype=str, keep_default_na=False,
                      quoting=3)  # QUOTE_NONE: titles hold bare quotes
    if raw.shape[1] != len(names):
        raise DataError(f"{path}: expected {len(names)} '::'-separated fields ({', '.join(names)}), "
                        f"found {raw.shape[1]}")
    raw.columns = names
    return raw


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot parse as UTF-8 CSV: {e}") from e
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; columns are {list(raw.columns)}")
    return raw


def movies_table(ids: pd.Series, titles: pd.Series, genres: pd.Series) -> pd.DataFrame:
    """Canonical items from MovieLens movie rows: the "(1995)" suffix becomes `year`."""
    titles = titles.str.strip()
    year = pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce")
    return pd.DataFrame(
        {
            "item_id": ids.str.strip().to_numpy(),
            "title": titles.str.replace(YEAR_SUFFIX, "", regex=True).to_numpy(),
            "genres": [[g for g in s.split("|") if g and g != "(no genres listed)"] for s in genres],
            "year": year.astype("Int32").to_numpy(),
            "text": None,
        }
    )


def ratings_table(users: pd.Series, items: pd.Series, ratings: pd.Series, ts: pd.Series, path: Path,
                  config: DataConfig) -> pd.DataFrame:
    value = pd.to_numeric(ratings, errors="coerce")
    when = pd.to_numeric(ts, errors="coerce")
    bad = value.isna() | when.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise DataError(f"{path}: row {row}: rating or timestamp is not a number "
                        f"({ratings.iloc[row - 1]!r}, {ts.iloc[row - 1]!r})")
    return pd.DataFrame(
        {
            "user_id": users.str.strip().to_numpy(),
            "item_id": items.str.strip().to_numpy(),
            "timestamp": pd.to_datetime(when.astype("int64"), unit="s", utc=True).astype("datetime64[s, UTC]")
            .to_numpy(),
            "behavior": ratings_to_behaviors(value.to_numpy(), config),
            "value": value.astype("float64").to_numpy(),
        }
    )


def _load_ml1m(root: Path, config: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    r = _read_dat(root / "ratings.dat", ["user", "item", "rating", "ts"])
    m = _read_dat(root / "movies.dat", ["item", "title", "genres"])
    u = _read_dat(root / "users.dat", ["user_id", "gender", "age", "occupation", "zip"])
    code = pd.to_numeric(u["occupation"], errors="coerce")
    u["occupation"] = [ML1M_OCCUPATIONS[int(o)] if pd.notna(o) and 0 <= o < len(ML1M_OCCUPATIONS) else "other"
                       for o in code]
    events = ratings_table(r["user"], r["item"], r["rating"], r["ts"], root / "ratings.dat", config)
    return events, movies_table(m["item"], m["title"], m["genres"]), u[["user_id", "age", "gender", "occupation"]]


def _load_csv_release(root: Path, config: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    r = _read_csv(root / "ratings.csv", ("userId", "movieId", "rating", "timestamp"))
    m = _read_csv(root / "movies.csv", ("movieId", "title", "genres"))
    events = ratings_table(r["userId"], r["movieId"], r["rating"], r["timestamp"], root / "ratings.csv", config)
    users = pd.DataFrame({"user_id": np.sort(events["user_id"].unique())})
    return events, movies_table(m["movieId"], m["title"], m["genres"]), users


def load_movielens(name: str, path: str | Path | None = None, config: DataConfig | None = None,
                   check: bool = True) -> Dataset:
    """Load a MovieLens release by name (ml-1m, ml-latest-small, ml-20m, ml-25m) from its raw files."""
    if name not in FILES:
        raise DataError(f"unknown MovieLens release {name!r}: known {sorted(FILES)} (ml-100k has its own loader)")
    config = config or DataConfig()
    root = Path(path) if path is not None else movielens_dir(name)
    events, items, users = (_load_ml1m if name == "ml-1m" else _load_csv_release)(root, config)
    dup = items["item_id"].duplicated()
    if dup.any():
        raise DataError(f"{root / FILES[name][1]}: duplicate movie id {items['item_id'][dup].iloc[0]!r}")
    unknown = ~events["item_id"].isin(items["item_id"])
    if unknown.any():
        raise DataError(f"{root / FILES[name][0]}: {int(unknown.sum())} ratings name movies missing from "
                        f"{FILES[name][1]}, first at row {int(np.flatnonzero(unknown)[0]) + 1}")
    got = {"users": int(events["user_id"].nunique()), "items": len(items), "events": len(events)}
    expected = EXPECTED.get(name)
    if check and expected is not None and got != expected:
        raise DataError(f"{root}: {name} should have {expected}, found {got}; damaged copy?")
    return Dataset(name=name, events=events, items=items, users=users, report=LoadReport(), domain=MOVIE_DOMAIN,
                   behaviors=RATING_VOCAB)
