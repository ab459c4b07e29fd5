"""A user's own logs (CSV, Parquet or JSON lines) -> a canonical `Dataset`, with every bad row skipped and
counted.

`import_tables` reads an events table, an items table and optionally a users table. A column mapping
(canonical name -> the user's column, e.g. `{"user_id": "uid", "item_id": "movie", "timestamp": "ts"}`)
renames columns; `items.item_id=movie_id` style keys apply to one table only. Unmapped canonical names are
looked up under their own name.

Canonical columns: events need user_id, item_id, timestamp and a behaviour: a behavior column, one constant
type for all (`EventMeaning.behavior`), or a value declared as a rating (turned into liked/watched/disliked with
DataConfig thresholds). A value column must have a declared meaning (rating, count: a strength kept in
`value`, never a dislike; none: ignored); behaviour names must be common ones or declared
(`llmrec.data.behaviors`). Search events (a search-kind behaviour) carry a `query` and no item_id; they go to
`Dataset.queries`, never to the item events. Items need item_id and title, and may have genres
(split on `genre_sep`, or a JSON list), year, text and brand; users need user_id, every other column becomes
profile text. Titles in the MovieLens form "Toy Story (1995)" give the year and lose the suffix: always with
`year_from_title=True`, never with False, and by default (None) when no year column is mapped and most
titles end in a "(yyyy)" year.
Timestamps are epoch seconds or ISO-8601 (naive = UTC, offsets converted to UTC), stored as whole seconds.

Bad input. Missing columns and undecodable bytes are errors naming the file (and column or byte offset).
Rows with an empty required field, an unparseable timestamp or rating, an unknown item id, or that repeat
an earlier event (same user, item, timestamp, behaviour) or item/user id are skipped and counted in the
`LoadReport` by reason, with `file:row N` examples (N counts data rows from 1, the header excluded); an
unparseable year only loses the year (counted as bad_year, the item stays). `strict=True` raises
`DataError` naming file, row and field at the first such row instead. Each row is counted once, under the
first reason it fails.
"""

from __future__ import annotations

import codecs
import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llmrec.config import DataConfig
from llmrec.data.behaviors import (QUERY_COLUMNS, BehaviorVocab, EventMeaning, behavior_source, check_search_rows,
                                   ratings_to_behaviors, vocab_for)
from llmrec.data.datasets import YEAR_SUFFIX, DataError, Dataset, LoadReport

log = logging.getLogger(__name__)
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")

TABLE_COLUMNS = {
    "events": ("user_id", "item_id", "timestamp", "behavior", "value", "query"),
    "items": ("item_id", "title", "genres", "year", "text", "brand"),
    "users": ("user_id",),
}
CANONICAL = tuple(dict.fromkeys(c for cols in TABLE_COLUMNS.values() for c in cols))


def parse_mapping(spec: str | None) -> dict[str, str]:
    """`user_id=uid,item_id=movie,items.item_id=movie_id` -> a mapping dict; unknown names are errors."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        key, sep, col = part.partition("=")
        if not sep or not col.strip():
            raise ValueError(f"--map entry {part!r} is not NAME=COLUMN")
        mapping[key.strip()] = col.strip()
    _check_mapping(mapping)
    return mapping


def _check_mapping(mapping: dict[str, str]) -> None:
    for key in mapping:
        table, _, name = key.rpartition(".")
        if table and table not in TABLE_COLUMNS:
            raise ValueError(f"mapping key {key!r}: table must be one of {sorted(TABLE_COLUMNS)}")
        allowed = TABLE_COLUMNS[table] if table else CANONICAL
        if name not in allowed:
            raise ValueError(f"mapping key {key!r}: unknown canonical column, allowed {list(allowed)}")


def _column_for(mapping: dict[str, str], table: str, name: str) -> str:
    return mapping.get(f"{table}.{name}", mapping.get(name, name))


# --- Reading files -------------------------------------------------------------------------------


def check_encoding(path: Path, encoding: str, block: int = 1 << 22) -> None:
    """Decode the whole file incrementally; on failure name the file, byte offset and line."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, newlines = 0, 0
    with path.open("rb") as f:
        while True:
            data = f.read(block)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                at = offset + e.start
                line = newlines + data[: e.start].count(b"\n") + 1
                raise DataError(
                    f"{path}: not valid {encoding} at byte offset {at} (line {line}, byte {data[e.start:e.start + 1]!r}); "
                    f"pass the file's encoding, e.g. --encoding latin-1"
                ) from None
            if not data:
                return
            offset += len(data)
            newlines += data.count(b"\n")


def read_json_lines(path: Path, encoding: str) -> pd.DataFrame:
    """JSON lines (.json/.jsonl/.ndjson, optionally .gz): one object per line; a bad line is an error naming
    the file and line. Lists (genres) stay lists, numbers stay numbers."""
    rows = []
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding=encoding) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n} is not JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {n} is a JSON {type(row).__name__}, expected an object")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid {encoding} ({e.reason}); pass the file's encoding, "
                        f"e.g. --encoding latin-1") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    return pd.DataFrame.from_records(rows)


def read_table(path: str | Path, encoding: str = "utf-8") -> pd.DataFrame:
    """CSV (any suffix; .tsv is tab-separated) as strings, JSON lines (.json/.jsonl/.ndjson, optionally
    gzipped) or Parquet (.parquet/.pq) as stored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pq.read_table(path).to_pandas()
    inner = path.with_suffix("").suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if inner in JSON_SUFFIXES:
        return read_json_lines(path, encoding)
    check_encoding(path, encoding)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    # pyarrow's reader is ~9x faster; on a malformed file the C reader gives the line-numbered message.
    for engine in ("pyarrow", "c"):
        try:
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding, engine=engine)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            if engine == "c":
                raise DataError(f"{path}: cannot parse as {'TSV' if sep == chr(9) else 'CSV'}: {e}") from e
    raise AssertionError("unreachable")


class _Rows:
    """Counts a table's bad rows by reason (or raises in strict mode); tracks which rows are still alive."""

    def __init__(self, path: Path, n: int, report: LoadReport, strict: bool) -> None:
        self.path, self.report, self.strict = path, report, strict
        self.alive = np.ones(n, dtype=bool)

    def reject(self, bad: np.ndarray, reason: str, field: str, values: pd.Series | None = None,
               keep_row: bool = False) -> None:
        """Skip rows in `bad` that are still alive, counting them under `reason` (`keep_row`: skip only the
        field's value, the row stays)."""
        hit = np.flatnonzero(bad & self.alive)
        if not len(hit):
            return
        if self.strict:
            value = "" if values is None else f": {values.iloc[hit[0]]!r}"
            raise DataError(f"{self.path}: row {hit[0] + 1}, field {field!r}: {reason.replace('_', ' ')}{value}")
        self.report.skipped[reason] = self.report.skipped.get(reason, 0) + len(hit)
        examples = self.report.examples.setdefault(reason, [])
        examples.extend(f"{self.path.name}:row {i + 1} ({field})" for i in hit[: max(0, 5 - len(examples))])
        if not keep_row:
            self.alive[hit] = False


def _pick(df: pd.DataFrame, path: Path, mapping: dict[str, str], table: str, required: tuple[str, ...],
          optional: tuple[str, ...] = ()) -> dict[str, pd.Series]:
    cols = {}
    for name in required + optional:
        col = _column_for(mapping, table, name)
        if col in df.columns:
            cols[name] = df[col]
        elif name in required:
            raise DataError(f"{path}: missing column {col!r} (canonical {table} field {name!r}); "
                            f"columns are {list(df.columns)}; map it with --map {name}=<column>")
    return cols


def _empty(s: pd.Series) -> np.ndarray:
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
        return (s.isna() | (s.astype(str).str.strip() == "")).to_numpy()
    return s.isna().to_numpy()


def _ids(s: pd.Series) -> pd.Series:
    """Ids as strings; integral floats from Parquet lose their '.0'."""
    if pd.api.types.is_float_dtype(s.dtype):
        s = s.astype("Int64")
    return s.astype(str).str.strip()


def to_numbers(s: pd.Series) -> pd.Series:
    """Text -> float64, NaN where empty or not a number. Arrow's cast is ~20x faster than pandas' parser,
    so it goes first; only a column with a non-number in it takes the slow path."""
    if not pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
        return pd.to_numeric(s, errors="coerce").astype("float64")
    text = s.astype(str).str.strip()
    try:
        arr = pa.Array.from_pandas(text)
        arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
        return pd.Series(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), index=s.index)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
        return pd.to_numeric(text, errors="coerce").astype("float64")


def parse_timestamps(s: pd.Series) -> pd.Series:
    """Epoch seconds or ISO-8601 -> datetime64[s, UTC]; unparseable -> NaT (the caller counts them)."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC").dt.floor("s").astype("datetime64[s, UTC]")
    if s.dtype.kind == "M":
        return s.dt.tz_localize("UTC").dt.floor("s").astype("datetime64[s, UTC]")
    text = s.astype(str).str.strip()
    num = to_numbers(text)
    out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    is_num = num.notna() & np.isfinite(num)
    in_range = is_num & (num.abs() < 1e11)  # epoch seconds up to year 5138; ms values are rejected, not misread
    out[in_range] = pd.to_datetime(num[in_range].astype("float64"), unit="s", utc=True)
    iso = ~is_num & (text != "")
    if iso.any():
        out[iso] = pd.to_datetime(text[iso], format="ISO8601", utc=True, errors="coerce")
    return out.dt.floor("s").astype("datetime64[s, UTC]")


# --- Tables --------------------------------------------------------------------------------------


def wants_year_from_title(titles: pd.Series, has_year: bool, year_from_title: bool | None) -> bool:
    """Explicit choice, else auto: no year column and most titles end in a MovieLens "(1995)" year."""
    if year_from_title is not None:
        return year_from_title
    if has_year or titles.empty:
        return False
    return bool(titles.astype(str).str.contains(YEAR_SUFFIX, regex=True).mean() > 0.5)


def _import_items(path: Path, df: pd.DataFrame, mapping, report, strict, genre_sep: str,
                  year_from_title: bool | None = None) -> pd.DataFrame:
    c = _pick(df, path, mapping, "items", ("item_id", "title"), ("genres", "year", "text", "brand"))
    rows = _Rows(path, len(df), report, strict)
    for name in ("item_id", "title"):
        rows.reject(_empty(c[name]), "empty_field", name)
    year = pd.Series(pd.NA, index=df.index, dtype="Int32")
    if "year" in c:
        num = to_numbers(c["year"])
        bad = (num.isna() | (num % 1 != 0)).to_numpy() & ~_empty(c["year"])
        rows.reject(bad, "bad_year", "year", c["year"], keep_row=True)  # the item stays, without a year
        year = num.where(~pd.Series(bad, index=df.index)).astype("Float64").round().astype("Int32")
    ids = _ids(c["item_id"])
    rows.reject(ids.duplicated().to_numpy(), "duplicate_item", "item_id", ids)
    if "genres" in c:
        g = c["genres"]
        genres = g.map(lambda v: [str(x).strip() for x in v if str(x).strip()] if isinstance(v, (list, np.ndarray))
                       else [x.strip() for x in str(v).split(genre_sep) if x.strip()] if pd.notna(v) else [])
    else:
        genres = pd.Series([[] for _ in range(len(df))], index=df.index)
    text = c["text"].astype(str).where(~pd.Series(_empty(c["text"]), index=df.index)) if "text" in c else None
    brand = None
    if "brand" in c:
        brand = c["brand"].astype(str).str.strip().astype(object)
        brand[_empty(c["brand"])] = None
    title = c["title"].astype(str).str.strip()
    if wants_year_from_title(title, "year" in c, year_from_title):
        # The title's year fills a missing year column value; the suffix leaves the title either way.
        from_title = pd.to_numeric(title.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce").astype("Int32")
        year = year.fillna(from_title)
        title = title.str.replace(YEAR_SUFFIX, "", regex=True).str.strip()
        log.info("%s: years taken from titles (%d items)", path, int(from_title.notna().sum()))
    a = rows.alive
    return pd.DataFrame({
        "item_id": ids[a].to_numpy(), "title": title[a].to_numpy(),
        "genres": genres[a].tolist(), "year": year[a].to_numpy(),
        "text": None if text is None else text[a].to_numpy(dtype=object),
        "brand": None if brand is None else brand[a].to_numpy(dtype=object),
    })


def _import_events(path: Path, df: pd.DataFrame, mapping, report, strict, known_items: pd.Index,
                   config: DataConfig, how: EventMeaning) -> tuple[pd.DataFrame, pd.DataFrame, BehaviorVocab]:
    """Item events, search queries and the behaviour vocabulary of one events table."""
    c = _pick(df, path, mapping, "events", ("user_id", "item_id", "timestamp"), ("behavior", "value", "query"))
    source = behavior_source(path, c, how, lambda name: _column_for(mapping, "events", name))
    rows = _Rows(path, len(df), report, strict)
    for name in ("user_id", "timestamp") + (("behavior",) if source == "column" else ()):  # item_id: per kind
        rows.reject(_empty(c[name]), "empty_field", name)
    if source == "rating":
        rows.reject(_empty(c["value"]), "empty_field", "value")
    ts = parse_timestamps(c["timestamp"])
    rows.reject(ts.isna().to_numpy(), "bad_timestamp", "timestamp", c["timestamp"])
    value = pd.Series(np.nan, index=df.index)
    if "value" in c and how.value_meaning != "none":
        value = to_numbers(c["value"])
        bad = value.isna().to_numpy() & ~_empty(c["value"])
        if how.value_meaning == "count":  # a strength: a negative count is as bad as a non-number
            bad |= (value < 0).to_numpy()
        rows.reject(bad, "bad_value", "value", c["value"])
    if source == "column":
        behavior = c["behavior"].astype(str).str.strip()
    elif source == "constant":
        behavior = pd.Series(how.behavior, index=df.index)
    else:
        behavior = pd.Series(ratings_to_behaviors(value.fillna(0).to_numpy(), config), index=df.index)
    counts = behavior[rows.alive].value_counts().to_dict()
    vocab = vocab_for(counts, how.value_meaning or "none", how.declared, where=str(path))
    search = behavior.isin([s.name for s in vocab.specs if s.kind == "search"]).to_numpy()
    users, items = _ids(c["user_id"]), _ids(c["item_id"])
    no_item = _empty(c["item_id"])
    if search.any():
        query = check_search_rows(path, c, search)
        rows.reject(search & ~no_item, "search_with_item", "item_id", items)
        rows.reject(search & _empty(query), "empty_field", "query")
    rows.reject(~search & no_item, "empty_field", "item_id")
    rows.reject(~search & ~items.isin(known_items).to_numpy(), "unknown_item", "item_id", items)
    frame = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": ts, "behavior": behavior,
                          "value": value.astype("float64")})
    if search.any():
        frame["item_id"] = frame["item_id"].where(~search, query.astype(str).str.strip())  # dedupe by query text
    dup = frame[rows.alive].duplicated(["user_id", "item_id", "timestamp", "behavior"])
    rows.reject(dup.reindex(frame.index, fill_value=False).to_numpy(), "duplicate_event", "timestamp",
                c["timestamp"])
    kept = frame[rows.alive & ~search].reset_index(drop=True)
    queries = frame[rows.alive & search].rename(columns={"item_id": "query"})[list(QUERY_COLUMNS)]
    return kept, queries.reset_index(drop=True), vocab


def _import_users(path: Path, df: pd.DataFrame, mapping, report, strict) -> pd.DataFrame:
    c = _pick(df, path, mapping, "users", ("user_id",))
    rows = _Rows(path, len(df), report, strict)
    rows.reject(_empty(c["user_id"]), "empty_field", "user_id")
    ids = _ids(c["user_id"])
    rows.reject(ids.duplicated().to_numpy(), "duplicate_user", "user_id", ids)
    profile = df.drop(columns=[c["user_id"].name]).astype(str)
    return pd.concat([ids.rename("user_id"), profile], axis=1)[rows.alive].reset_index(drop=True)


def import_tables(
    events: str | Path,
    items: str | Path,
    users: str | Path | None = None,
    mapping: dict[str, str] | None = None,
    strict: bool = False,
    encoding: str = "utf-8",
    genre_sep: str = "|",
    config: DataConfig | None = None,
    name: str | None = None,
    year_from_title: bool | None = None,
    how: EventMeaning | None = None,
) -> Dataset:
    """Read the user's tables into a canonical `Dataset` (see the module docstring for the rules).

    `how` says what the events' behaviour and value mean (`llmrec.data.behaviors.EventMeaning`): a value
    column without a declared meaning, or a behaviour type that is neither common nor declared, is an error.
    """
    mapping = dict(mapping or {})
    how = how or EventMeaning()
    _check_mapping(mapping)
    config = config or DataConfig()
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    report = LoadReport()
    ipath, epath = Path(items), Path(events)
    item_table = _import_items(ipath, read_table(ipath, encoding), mapping, report, strict, genre_sep,
                               year_from_title)
    event_table, queries, behaviors = _import_events(epath, read_table(epath, encoding), mapping, report, strict,
                                                     pd.Index(item_table["item_id"]), config, how)
    if users is not None:
        upath = Path(users)
        user_table = _import_users(upath, read_table(upath, encoding), mapping, report, strict)
    else:
        user_table = pd.DataFrame({"user_id": np.sort(event_table["user_id"].unique())})
    return Dataset(name=name or epath.stem, events=event_table, items=item_table, users=user_table, report=report,
                   behaviors=behaviors, queries=queries)
