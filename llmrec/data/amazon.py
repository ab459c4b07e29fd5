"""Amazon Review Data (2018) per-category files -> a canonical `Dataset` (`amazon-2018-<category>`).

A category folder holds the reviews, `<Category>_5.json[.gz]` (the 5-core file) or `<Category>.json[.gz]`,
JSON lines with overall, reviewerID, asin, unixReviewTime, ..., and the metadata `meta_<Category>.json[.gz]`,
JSON lines with asin, title, description (list of str), category (list), brand, details, date, ...

Upstream faults are repaired and counted in the LoadReport, never dropped silently:
- metadata titles that are HTML fragments (`<span class="a-size-medium ...`) or empty are rebuilt from the
  brand/publisher and the first words of the description (`title_rebuilt`);
- repeated metadata rows for one asin keep the first (`duplicate_meta`); repeated (reviewer, asin)
  reviews keep the earliest (`duplicate_review`); reviews without a rating/id/time are skipped (`bad_review`);
- reviewed items without metadata get their asin as title (`item_without_meta`).
genres are the categories minus the store root shared by every item; brand is `brand` or details
'Publisher:'; year stays empty unless `date` holds a real year.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.config import DataConfig
from llmrec.data.behaviors import RATING_VOCAB
from llmrec.data.datasets import DataError, Dataset, LoadReport, llmrec_home, ratings_to_behaviors
from llmrec.schema import Domain

log = logging.getLogger(__name__)

AMAZON_ENV = "LLMREC_AMAZON_DIR"
PREFIX = "amazon-2018-"
# Item/user nouns per category; anything else is a generic product bought by a customer.
DOMAINS = {
    "magazine_subscriptions": Domain(item="magazine", items="magazines", user="reader"),
    "books": Domain(item="book", items="books", user="reader"),
    "kindle_store": Domain(item="e-book", items="e-books", user="reader"),
    "movies_and_tv": Domain(item="title", items="titles", user="viewer"),
    "cds_and_vinyl": Domain(item="album", items="albums", user="listener"),
    "digital_music": Domain(item="album", items="albums", user="listener"),
    "video_games": Domain(item="game", items="games", user="player"),
    "software": Domain(item="program", items="programs", user="user"),
}
GENERIC_DOMAIN = Domain(item="product", items="products", user="customer")
# Known facts (STYLE 16) of the published files: (users, items, review rows).
EXPECTED = {"magazine_subscriptions": {"users": 348, "items": 157, "reviews": 2375}}
_TAG = re.compile(r"<[^>]*>?")
_TITLE_WORDS = 8


def amazon_dir(name: str) -> Path:
    """Folder of `amazon-2018-<slug>`: $LLMREC_AMAZON_DIR/<name or slug>, else $LLMREC_HOME/datasets/<name>."""
    slug = name.removeprefix(PREFIX)
    roots = [Path(os.environ[AMAZON_ENV]).expanduser()] if os.environ.get(AMAZON_ENV) else []
    candidates = [r / n for r in roots for n in (name, slug)] + roots + [llmrec_home() / "datasets" / name]
    for path in candidates:
        if path.is_dir() and any(path.glob("meta_*.json*")):
            return path
    raise FileNotFoundError(
        f"{name}: no folder with meta_<Category>.json[.gz] among {[str(p) for p in candidates]}; set {AMAZON_ENV} "
        f"to the folder holding the category folder (or the files), or place them in {candidates[-1]}"
    )


def category_files(root: Path) -> tuple[str, Path, Path]:
    """(Category, reviews file, metadata file) found in `root`."""
    metas = sorted(root.glob("meta_*.json*"))
    if len(metas) != 1:
        raise DataError(f"{root}: expected one meta_<Category>.json[.gz], found {[p.name for p in metas]}")
    category = re.sub(r"\.json(\.gz)?$", "", metas[0].name.removeprefix("meta_"))
    for stem in (f"{category}_5", category):
        for suffix in (".json", ".json.gz"):
            if (root / (stem + suffix)).is_file():
                return category, root / (stem + suffix), metas[0]
    raise DataError(f"{root}: no review file {category}_5.json[.gz] or {category}.json[.gz] next to {metas[0].name}")


def read_json_lines(path: Path, report: LoadReport, reason: str) -> list[dict]:
    """JSON lines (plain or gzip). Some 2018 files are Python-literal lines; those parse too. Bad lines are
    counted under `reason` with their line number."""
    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    try:
                        row = ast.literal_eval(line)
                    except (ValueError, SyntaxError):
                        row = None
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    report.skip(reason, f"{path.name}:line {n}")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot read as UTF-8 JSON lines: {e}") from e
    return rows


def strip_html(text: str) -> str:
    """Text without tags or entities, whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(_TAG.sub(" ", text))).strip()


def is_broken_title(title: object) -> bool:
    """True for an empty title or an HTML fragment such as '<span class="a-size-medium ..."'."""
    if not isinstance(title, str) or not title.strip():
        return True
    return bool(re.search(r"<|>|class=", title)) or not re.search(r"[A-Za-z0-9]", title)


def rebuild_title(brand: str | None, description: str | None, asin: str) -> str:
    """A readable stand-in title: the brand and the first words of the description, else the asin."""
    words = (description or "").split()
    head = " ".join(words[:_TITLE_WORDS]) + (" ..." if len(words) > _TITLE_WORDS else "")
    parts = [p for p in (brand, head) if p]
    return ": ".join(parts) if parts else asin


def _year(date: object) -> int | None:
    """A year only from a real date ('June 1, 2004', '2004'); empty or marketing text gives None."""
    if not isinstance(date, str):
        return None
    m = re.fullmatch(r"\s*(?:[A-Za-z]+\.?\s+(?:\d{1,2},\s*)?)?((?:19|20)\d{2})\s*", date)
    return int(m.group(1)) if m else None


def _brand(row: dict) -> str | None:
    brand = row.get("brand")
    if not isinstance(brand, str) or not strip_html(brand):
        details = row.get("details") if isinstance(row.get("details"), dict) else {}
        brand = details.get("Publisher:") or details.get("Publisher")
    brand = strip_html(brand) if isinstance(brand, str) else ""
    return brand or None


def _items_table(meta: list[dict], reviewed: list[str], report: LoadReport, path: Path) -> pd.DataFrame:
    by_asin: dict[str, dict] = {}
    for n, row in enumerate(meta, 1):
        asin = str(row.get("asin", "")).strip()
        if asin in by_asin:
            report.skip("duplicate_meta", f"{path.name}:row {n}")
        elif asin:
            by_asin[asin] = row
    cats = {a: [strip_html(c) for c in by_asin[a].get("category") or [] if isinstance(c, str) and strip_html(c)]
            for a in reviewed if a in by_asin}
    listed = [set(c) for c in cats.values() if c]
    root = set.intersection(*listed) if listed else set()  # the store root every categorised item shares
    rows = []
    for asin in reviewed:
        row = by_asin.get(asin)
        if row is None:
            report.skip("item_without_meta", asin)
            rows.append({"item_id": asin, "title": asin, "genres": [], "year": None, "text": None, "brand": None})
            continue
        desc = row.get("description")
        joined = " ".join(d for d in desc if isinstance(d, str)) if isinstance(desc, list) else str(desc or "")
        text = strip_html(joined)
        brand = _brand(row)
        title = row.get("title")
        if is_broken_title(title):
            report.skip("title_rebuilt", asin)
            title = rebuild_title(brand, text, asin)
        rows.append({"item_id": asin, "title": strip_html(title), "genres": [c for c in cats[asin] if c not in root],
                     "year": _year(row.get("date")), "text": text or None, "brand": brand})
    items = pd.DataFrame(rows)
    items["year"] = items["year"].astype("Int32")
    return items


def _events_table(reviews: list[dict], path: Path, report: LoadReport, config: DataConfig) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user_id": [str(r.get("reviewerID") or "").strip() for r in reviews],
            "item_id": [str(r.get("asin") or "").strip() for r in reviews],
            "ts": pd.to_numeric(pd.Series([r.get("unixReviewTime") for r in reviews], dtype=object), errors="coerce"),
            "value": pd.to_numeric(pd.Series([r.get("overall") for r in reviews], dtype=object), errors="coerce"),
        }
    )
    bad = (frame["user_id"] == "") | (frame["item_id"] == "") | frame["ts"].isna() | frame["value"].isna()
    for i in np.flatnonzero(bad.to_numpy()):
        report.skip("bad_review", f"{path.name}:row {i + 1}")
    frame = frame[~bad].sort_values("ts", kind="mergesort")
    dup = frame.duplicated(["user_id", "item_id"])  # a reviewer's repeat of an asin: keep the earliest
    for i in frame.index[dup.to_numpy()]:
        report.skip("duplicate_review", f"{path.name}:row {i + 1}")
    frame = frame[~dup].sort_index()
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(),
            "item_id": frame["item_id"].to_numpy(),
            "timestamp": pd.to_datetime(frame["ts"].astype("int64"), unit="s", utc=True).astype("datetime64[s, UTC]")
            .to_numpy(),
            "behavior": ratings_to_behaviors(frame["value"].to_numpy(), config),
            "value": frame["value"].astype("float64").to_numpy(),
        }
    )


def load_amazon(path: str | Path, config: DataConfig | None = None, check: bool = True) -> Dataset:
    """Load one Amazon 2018 category folder; known categories are checked against their published counts."""
    config = config or DataConfig()
    root = Path(path)
    category, reviews_path, meta_path = category_files(root)
    report = LoadReport()
    reviews = read_json_lines(reviews_path, report, "bad_review_line")
    events = _events_table(reviews, reviews_path, report, config)
    if events.empty:
        raise DataError(f"{reviews_path}: no usable review rows")
    reviewed = list(dict.fromkeys(events["item_id"]))
    items = _items_table(read_json_lines(meta_path, report, "bad_meta_line"), reviewed, report, meta_path)
    users = pd.DataFrame({"user_id": np.sort(events["user_id"].unique())})
    key = category.lower()
    expected = EXPECTED.get(key)
    got = {"users": len(users), "items": len(items), "reviews": len(reviews)}
    if check and expected is not None and got != expected:
        raise DataError(f"{root}: Amazon 2018 {category} should have {expected}, found {got}; damaged copy?")
    slug = key.replace("_", "-")
    ds = Dataset(name=PREFIX + slug, events=events, items=items, users=users, report=report, behaviors=RATING_VOCAB,
                 domain=DOMAINS.get(key, GENERIC_DOMAIN))
    log.info("loaded %s: %s", ds.name, report.skipped)
    return ds
