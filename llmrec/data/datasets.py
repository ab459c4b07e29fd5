"""Raw events -> validated canonical tables (`Dataset`), and the dataset folder format.

A dataset folder holds `events.parquet`, `items.parquet`, `users.parquet` (schemas in `llmrec.schema`),
`queries.parquet` when the log has search events (user_id, timestamp, query: a search names no item), and
`dataset.json` (name, counts, load report, the behaviour vocabulary of `llmrec.data.behaviors`). Every command that takes `--dataset` accepts either a
built-in name (`ml-100k`) or such a folder; `resolve_dataset` does that lookup once.

MovieLens ratings become behaviours by threshold (DataConfig): rating >= 4 "liked", rating <= 2
"disliked", otherwise "watched"; the rating itself is kept in `value`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmrec.errors import DataError
from llmrec.config import DataConfig
from llmrec.data.behaviors import (QUERY_COLUMNS, RATING_VOCAB, BehaviorVocab, ratings_to_behaviors,
                                   vocab_from_events)
from llmrec.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, Domain, Event, Item, UserHistory

ML100K_ENV = "LLMREC_ML100K_DIR"
HOME_ENV = "LLMREC_HOME"
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Known facts (STYLE 16): a loader that disagrees is reading the wrong or a damaged file.
ML100K_EXPECTED = {"users": 943, "items": 1682, "events": 100_000}
SYNTHETIC_MARKER = "SYNTHETIC"  # a file marking generated MovieLens-format data: no count check


@dataclass
class LoadReport:
    """What a loader skipped, by reason, with a few example rows; nothing is dropped silently."""

    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(where)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "examples": dict(self.examples), "total_skipped": self.total_skipped}


@dataclass
class Dataset:
    """Canonical tables. `events` is sorted by (user_id, timestamp, original order)."""

    name: str
    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    report: LoadReport = field(default_factory=LoadReport)
    domain: Domain = field(default_factory=Domain)
    # None: derived from the events' names, which must then all be common ones (`behaviors.COMMON_BEHAVIORS`)
    behaviors: BehaviorVocab | None = None
    queries: pd.DataFrame | None = None  # search events (QUERY_COLUMNS), never items nor targets

    def __post_init__(self) -> None:
        self.events = sort_events(self.events)
        if self.queries is None:
            self.queries = pd.DataFrame({c: pd.Series(dtype="datetime64[s, UTC]" if c == "timestamp" else object)
                                         for c in QUERY_COLUMNS})
        self.queries = sort_events(self.queries)
        if "brand" not in self.items.columns:  # folders written before the column existed
            self.items = self.items.assign(brand=None)

    @property
    def item_index(self) -> dict[str, Item]:
        if not hasattr(self, "_item_index"):
            self._item_index = {
                r.item_id: Item(
                    item_id=r.item_id,
                    title=r.title,
                    genres=tuple(r.genres),
                    year=None if pd.isna(r.year) else int(r.year),
                    text=_text_or_none(r.text),
                    brand=_text_or_none(r.brand),
                )
                for r in self.items.itertuples(index=False)
            }
        return self._item_index

    @property
    def behavior_vocab(self) -> BehaviorVocab:
        """The dataset's behaviour types (saved, or derived from common names for code-built datasets)."""
        if self.behaviors is None:
            self.behaviors = vocab_from_events(self.events)
        return self.behaviors

    def profile(self, user_id: str) -> dict[str, str]:
        if not hasattr(self, "_profiles"):
            cols = [c for c in self.users.columns if c != "user_id"]
            self._profiles = {
                r["user_id"]: {c: str(r[c]) for c in cols if pd.notna(r[c])}
                for r in self.users.to_dict("records")
            }
        return self._profiles.get(user_id, {})

    def history(self, user_id: str, events: pd.DataFrame | None = None) -> UserHistory:
        """One user's events (from `events`, default all) as a validated `UserHistory`."""
        ev = self.events if events is None else events
        rows = ev[ev["user_id"] == user_id]
        return UserHistory(
            user_id=user_id,
            events=tuple(
                Event(user_id=user_id, item_id=r.item_id, timestamp=r.timestamp.to_pydatetime(),
                      behavior=r.behavior, value=None if pd.isna(r.value) else float(r.value))
                for r in rows.itertuples(index=False)
            ),
            profile=self.profile(user_id),
        )

    def summary(self) -> dict:
        return {
            "name": self.name,
            "users": int(self.events["user_id"].nunique()),
            "items": len(self.items),
            "events": len(self.events),
            "domain": self.domain.model_dump(),
            "behaviors": {k: int(v) for k, v in self.events["behavior"].value_counts().sort_index().items()},
            "report": self.report.to_dict(),
            **({"behavior_vocab": self.behaviors.model_dump(mode="json", exclude_none=True)} if self.behaviors else {}),
            **({"queries": len(self.queries)} if len(self.queries) else {}),
        }

    def save(self, out: str | Path) -> Path:
        """Write the dataset folder (atomically per file)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_parquet(pa.Table.from_pandas(self.events[list(EVENTS_SCHEMA.names)], schema=EVENTS_SCHEMA,
                                            preserve_index=False), out / "events.parquet")
        _write_parquet(pa.Table.from_pandas(self.items[list(ITEMS_SCHEMA.names)], schema=ITEMS_SCHEMA,
                                            preserve_index=False), out / "items.parquet")
        users = self.users.astype({c: "string" for c in self.users.columns})
        _write_parquet(pa.Table.from_pandas(users, preserve_index=False), out / "users.parquet")
        if len(self.queries):
            _write_parquet(pa.Table.from_pandas(self.queries[list(QUERY_COLUMNS)], preserve_index=False),
                           out / "queries.parquet")
        elif (out / "queries.parquet").is_file():  # overwriting a folder that had searches
            (out / "queries.parquet").unlink()
        tmp = out / "dataset.json.tmp"
        tmp.write_text(json.dumps(self.summary(), indent=2) + "\n")
        tmp.replace(out / "dataset.json")
        return out


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _text_or_none(value: object) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Stable sort by user then time: ties keep their input order, so the order is reproducible."""
    return events.sort_values(["user_id", "timestamp"], kind="mergesort").reset_index(drop=True)


# --- Built-in datasets ----------------------------------------------------------------------------


YEAR_SUFFIX = r"\s*\(\d{4}\)\s*$"  # "Toy Story (1995)": the release year MovieLens appends to titles


def strip_year(title: str) -> str:
    """A title without a trailing "(1995)" year."""
    return re.sub(YEAR_SUFFIX, "", title).strip()


def llmrec_home() -> Path:
    return Path(os.environ.get(HOME_ENV, Path.home() / ".cache" / "llmrec")).expanduser()


def ml100k_dir() -> Path:
    """Where ML-100K lives: $LLMREC_ML100K_DIR, else the folder `llmrec data download` writes."""
    env = os.environ.get(ML100K_ENV)
    path = Path(env).expanduser() if env else llmrec_home() / "datasets" / "ml-100k"
    if not (path / "u.data").is_file():
        raise FileNotFoundError(
            f"MovieLens-100K not found at {path} (no u.data). Run `llmrec data download ml-100k` "
            f"or set {ML100K_ENV} to a folder holding u.data, u.item and u.user."
        )
    return path


def load_ml100k(path: str | Path | None = None, config: DataConfig | None = None,
                expected: dict[str, int] | None = ML100K_EXPECTED) -> Dataset:
    """Load MovieLens-100K from its raw files and check it against the known counts.

    `expected=None` skips the count check, for files in the ML-100K format that are not the real set
    (a filtered copy); so does a folder marked by a `SYNTHETIC` file (the test suite's generated data,
    which it serves under $LLMREC_ML100K_DIR so that `--dataset ml-100k` commands run anywhere).
    """
    config = config or DataConfig()
    root = Path(path) if path is not None else ml100k_dir()
    if (root / SYNTHETIC_MARKER).is_file():
        expected = None
    report = LoadReport()
    events = _read_ml100k_ratings(root / "u.data", config)
    items = _read_ml100k_items(root / "u.item")
    users = _read_ml100k_users(root / "u.user")
    unknown = ~events["item_id"].isin(items["item_id"])
    if unknown.any():
        raise DataError(f"{root / 'u.data'}: {int(unknown.sum())} events name items missing from u.item, "
                        f"first at row {int(np.flatnonzero(unknown)[0]) + 1}")
    ds = Dataset(name="ml-100k", events=events, items=items, users=users, report=report, behaviors=RATING_VOCAB,
                 domain=Domain(item="movie", items="movies", user="viewer"))
    got = {"users": ds.events["user_id"].nunique(), "items": len(items), "events": len(events)}
    if expected is not None and got != expected:
        raise DataError(f"{root}: MovieLens-100K should have {expected}, found {got}; damaged copy?")
    return ds


def _read_ml100k_ratings(path: Path, config: DataConfig) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, sep="\t", header=None, names=["user_id", "item_id", "rating", "ts"],
                          dtype={"user_id": str, "item_id": str, "rating": "int64", "ts": "int64"})
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot parse as user<TAB>item<TAB>rating<TAB>timestamp: {e}") from e
    return pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "item_id": raw["item_id"],
            "timestamp": pd.to_datetime(raw["ts"], unit="s", utc=True).astype("datetime64[s, UTC]"),
            "behavior": ratings_to_behaviors(raw["rating"].to_numpy(), config),
            "value": raw["rating"].astype("float64"),
        }
    )


def _read_ml100k_items(path: Path) -> pd.DataFrame:
    # u.item is latin-1; 5 meta fields then 19 genre flags.
    raw = pd.read_csv(path, sep="|", header=None, encoding="latin-1", dtype=str, keep_default_na=False)
    if raw.shape[1] != 5 + len(ML100K_GENRES):
        raise DataError(f"{path}: expected {5 + len(ML100K_GENRES)} '|'-separated fields, found {raw.shape[1]}")
    flags = raw.iloc[:, 5:].to_numpy() == "1"
    genres = [[g for g, f in zip(ML100K_GENRES, row) if f and g != "unknown"] for row in flags]
    titles = raw[1].str.strip()
    release = pd.to_datetime(raw[2], format="%d-%b-%Y", errors="coerce")
    # The title carries the year, "Toy Story (1995)"; fall back to the release date.
    year = pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce").fillna(release.dt.year)
    return pd.DataFrame(
        {
            "item_id": raw[0],
            "title": titles.str.replace(YEAR_SUFFIX, "", regex=True),
            "genres": genres,
            "year": year.astype("Int32"),
            "text": None,
        }
    )


def _read_ml100k_users(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path, sep="|", header=None, names=["user_id", "age", "gender", "occupation", "zip"],
                      dtype=str, keep_default_na=False)
    return raw[["user_id", "age", "gender", "occupation"]]


def load_dataset_dir(path: str | Path) -> Dataset:
    """Read a dataset folder written by `Dataset.save` (or `llmrec data import`)."""
    root = Path(path)
    for name in ("events.parquet", "items.parquet", "users.parquet"):
        if not (root / name).is_file():
            raise DataError(f"{root}: not a dataset folder, missing {name} (write one with `llmrec data import`)")
    events = pq.read_table(root / "events.parquet").to_pandas()
    # pyarrow -> pandas may widen timestamp[s] to [ms]; the canonical unit is whole seconds, UTC.
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True).astype("datetime64[s, UTC]")
    items = pq.read_table(root / "items.parquet").to_pandas()
    items["genres"] = items["genres"].map(list)
    items["year"] = items["year"].astype("Int32")
    users = pq.read_table(root / "users.parquet").to_pandas()
    meta = json.loads((root / "dataset.json").read_text()) if (root / "dataset.json").is_file() else {}
    report = LoadReport(**{k: meta.get("report", {}).get(k, {}) for k in ("skipped", "examples")})
    domain = Domain(**meta["domain"]) if "domain" in meta else Domain()
    behaviors = BehaviorVocab.model_validate(meta["behavior_vocab"]) if "behavior_vocab" in meta else None
    queries = None
    if (root / "queries.parquet").is_file():
        queries = pq.read_table(root / "queries.parquet").to_pandas()
        queries["timestamp"] = pd.to_datetime(queries["timestamp"], utc=True).astype("datetime64[s, UTC]")
    return Dataset(name=meta.get("name", root.name), events=events, items=items, users=users, report=report,
                   domain=domain, behaviors=behaviors, queries=queries)


BUILTIN_NAMES = ("ml-100k", "ml-1m", "ml-latest-small", "ml-20m", "ml-25m", "amazon-2018-<category>")


def resolve_dataset(spec: str | Path, config: DataConfig | None = None) -> Dataset:
    """A built-in name (`ml-100k`, `ml-1m`, `amazon-2018-magazine-subscriptions`, ...) or a dataset folder.

    A name wins over a folder of the same name in the working directory: names are looked up in their
    configured places (environment variables, $LLMREC_HOME/datasets), never relative to the cwd.
    """
    name = str(spec)
    try:
        if name == "ml-100k":
            return load_ml100k(config=config)
        if name in ("ml-1m", "ml-latest-small", "ml-20m", "ml-25m"):
            from llmrec.data.movielens import load_movielens

            return load_movielens(name, config=config)
        if name.startswith("amazon-2018-") and not Path(spec).is_dir():
            from llmrec.data.amazon import amazon_dir, load_amazon

            return load_amazon(amazon_dir(name), config=config)
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    if Path(spec).is_dir():
        return load_dataset_dir(spec)
    raise DataError(f"unknown dataset {spec!r}: use a built-in name ({', '.join(BUILTIN_NAMES)}) or a dataset folder")


# --- Integer ids for models ----------------------------------------------------------------------


@dataclass(frozen=True)
class ItemVocab:
    """Item id <-> dense index 1..N (0 is padding), in the items table's order; saved with every model."""

    ids: tuple[str, ...]

    @classmethod
    def from_items(cls, items: pd.DataFrame) -> "ItemVocab":
        ids = tuple(items["item_id"].astype(str))
        if len(set(ids)) != len(ids):
            raise DataError("items table has duplicate item_id values")
        return cls(ids=ids)

    @property
    def size(self) -> int:
        """Number of rows in a score matrix: N items + the padding index 0."""
        return len(self.ids) + 1

    @property
    def index(self) -> dict[str, int]:
        if "_index" not in self.__dict__:
            object.__setattr__(self, "_index", {i: n + 1 for n, i in enumerate(self.ids)})
        return self.__dict__["_index"]

    def encode(self, item_ids) -> np.ndarray:
        idx = self.index
        try:
            return np.fromiter((idx[str(i)] for i in item_ids), dtype=np.int64)
        except KeyError as e:
            raise DataError(f"unknown item id {e.args[0]!r} (not in the items table)") from None

    def decode(self, indices) -> list[str]:
        return [self.ids[int(i) - 1] for i in indices]


def user_sequences(events: pd.DataFrame, vocab: ItemVocab) -> dict[str, np.ndarray]:
    """Per user, item indices in time order (events must be sorted, as `Dataset.events` is)."""
    codes = vocab.encode(events["item_id"])
    users = events["user_id"].to_numpy()
    if len(users) == 0:
        return {}
    # Boundaries of each user's run in the sorted table.
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return {users[s]: codes[s:e] for s, e in zip(starts, ends)}
