"""Built-in loaders by name (MovieLens releases, Amazon 2018 categories) on small files in the real formats."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import SHARED_DATA, real_data_dir
from typer.testing import CliRunner

from llmrec.cli import app
from llmrec.config import DataConfig
from llmrec.data import DataError, Dataset, resolve_dataset
from llmrec.data.amazon import AMAZON_ENV, is_broken_title, load_amazon, rebuild_title, strip_html
from llmrec.data.download import download_dataset
from llmrec.data.movielens import MOVIELENS_ENV, load_movielens

BROKEN = '<span class="a-size-medium a-color-secondary"'


# --- MovieLens ------------------------------------------------------------------------------------


def write_ml_csv(root: Path, ds: Dataset | None = None) -> Path:
    """ratings.csv + movies.csv as in ml-latest-small/ml-20m: quoted titles with commas, half stars."""
    root.mkdir(parents=True, exist_ok=True)
    if ds is None:
        movies = ('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n'
                  '11,"American President, The (1995)",Comedy|Drama|Romance\n'
                  '99,Babylon 5,(no genres listed)\n')
        ratings = "userId,movieId,rating,timestamp\n1,1,4.5,964982703\n1,11,2.0,964981247\n2,99,3.5,1445714835\n"
    else:
        m = ds.items.assign(title=ds.items["title"] + ds.items["year"].map(lambda y: f" ({y})" if pd.notna(y) else ""),
                            genres=ds.items["genres"].map(lambda g: "|".join(g) or "(no genres listed)"))
        movies = m.rename(columns={"item_id": "movieId"})[["movieId", "title", "genres"]].to_csv(index=False)
        e = ds.events.assign(rating=ds.events["value"] - 0.5 * (ds.events["value"] > 3),
                             timestamp=ds.events["timestamp"].astype("int64"))
        ratings = e.rename(columns={"user_id": "userId", "item_id": "movieId"})[
            ["userId", "movieId", "rating", "timestamp"]].to_csv(index=False)
    (root / "movies.csv").write_text(movies)
    (root / "ratings.csv").write_text(ratings)
    return root


def test_movielens_csv_release_parses_years_genres_and_half_stars(tmp_path):
    ds = load_movielens("ml-latest-small", write_ml_csv(tmp_path / "ml-latest-small"))
    items = ds.items.set_index("item_id")
    assert items.loc["11", "title"] == "American President, The" and items.loc["11", "year"] == 1995
    assert items.loc["99", "title"] == "Babylon 5" and pd.isna(items.loc["99", "year"])
    assert items.loc["99", "genres"] == []
    assert items.loc["1", "genres"] == ["Adventure", "Animation", "Children"]
    by_item = ds.events.set_index("item_id")
    assert by_item.loc["1", "behavior"] == "liked" and by_item.loc["11", "behavior"] == "disliked"
    assert by_item.loc["99", "behavior"] == "watched" and by_item.loc["1", "value"] == 4.5
    assert by_item.loc["1", "timestamp"] == pd.Timestamp(964982703, unit="s", tz="UTC")
    assert ds.domain.item == "movie" and ds.domain.user == "viewer" and list(ds.users["user_id"]) == ["1", "2"]
    strict = load_movielens("ml-latest-small", tmp_path / "ml-latest-small",
                            config=DataConfig(like_threshold=5.0, dislike_threshold=1.0))
    assert strict.events.set_index("item_id").loc["1", "behavior"] == "watched"  # thresholds come from DataConfig


def test_movielens_fixed_releases_check_published_counts(tmp_path):
    root = write_ml_csv(tmp_path / "ml-20m")
    with pytest.raises(DataError, match=r"ml-20m should have .*138493.*found"):
        load_movielens("ml-20m", root)
    assert len(load_movielens("ml-20m", root, check=False).events) == 3
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,7,4.0,964982703\n")
    with pytest.raises(DataError, match=r"ratings\.csv: 1 ratings name movies missing from movies\.csv, first at row"):
        load_movielens("ml-20m", root, check=False)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,four,964982703\n")
    with pytest.raises(DataError, match=r"ratings\.csv: row 1: rating or timestamp is not a number"):
        load_movielens("ml-20m", root, check=False)
    (root / "ratings.csv").write_text("user,movie\n1,1\n")
    with pytest.raises(DataError, match=r"missing columns \['userId', 'movieId', 'rating', 'timestamp'\]"):
        load_movielens("ml-20m", root, check=False)
    with pytest.raises(DataError, match="unknown MovieLens release"):
        load_movielens("ml-2m", root)


def test_ml1m_dat_files_in_latin1_with_user_codes(tmp_path):
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                      "73::Misérables, Les (1995)::Drama|Musical\n".encode("latin-1"))
    (root / "ratings.dat").write_text("1::1::5::978300760\n1::73::1::978302109\n6040::73::3::956703932\n")
    (root / "users.dat").write_text("1::F::1::10::48067\n6040::M::25::6::11106\n")
    ds = load_movielens("ml-1m", root, check=False)
    items = ds.items.set_index("item_id")
    assert items.loc["73", "title"] == "Misérables, Les" and items.loc["73", "genres"] == ["Drama", "Musical"]
    assert ds.profile("1") == {"age": "1", "gender": "F", "occupation": "K-12 student"}
    assert ds.profile("6040")["occupation"] == "doctor/health care"
    assert ds.events.groupby("user_id").size().to_dict() == {"1": 2, "6040": 1}
    with pytest.raises(DataError, match=r"ml-1m should have .*6040.*found"):
        load_movielens("ml-1m", root)
    (root / "users.dat").write_text("1::F::1\n")
    with pytest.raises(DataError, match=r"users\.dat: expected 5 '::'-separated fields"):
        load_movielens("ml-1m", root, check=False)


def test_resolve_dataset_finds_movielens_by_name(tmp_path, monkeypatch):
    write_ml_csv(tmp_path / "lens" / "ml-latest-small")
    monkeypatch.setenv(MOVIELENS_ENV, str(tmp_path / "lens"))
    assert resolve_dataset("ml-latest-small").name == "ml-latest-small"
    monkeypatch.delenv(MOVIELENS_ENV)
    monkeypatch.setenv("LLMREC_HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match="llmrec data download ml-latest-small"):
        resolve_dataset("ml-latest-small")
    res = CliRunner().invoke(app, ["data", "info", "--dataset", "ml-1m"])
    assert res.exit_code == 2 and "llmrec data download ml-1m" in res.output


# --- Amazon 2018 -----------------------------------------------------------------------------------


def review(user, asin, rating, ts, **extra):
    return json.dumps({"overall": rating, "verified": True, "reviewerID": user, "asin": asin,
                       "reviewerName": "Someone", "reviewText": "text", "unixReviewTime": ts, **extra})


def write_amazon(root: Path, category: str = "Books") -> Path:
    """A category folder: 5-core reviews (one duplicate, one broken line, one item without metadata) and gzip
    metadata (broken HTML titles, HTML description, a duplicate asin, the store root in every category list)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [review("U1", "A1", 5.0, 1_000_000_000), review("U1", "A2", 2.0, 1_000_100_000),
             review("U2", "A1", 3.0, 1_000_200_000), review("U1", "A1", 1.0, 1_100_000_000),  # a repeat: dropped
             "{not json", review("U2", "A9", 4.0, 1_000_300_000), review("U3", "A2", 4.0, 1_000_400_000)]
    (root / f"{category}_5.json").write_text("\n".join(lines) + "\n")
    store = category.replace("_", " ")
    meta = [
        {"asin": "A1", "title": BROKEN, "brand": "", "details": {"Publisher:": "Hearst Magazines"},
         "description": ["<b>Country Living</b> is your guide to creating the ultimate in country style."],
         "category": [store, "Home &amp; Garden", "Design"], "date": ""},
        {"asin": "A2", "title": "Wired &amp; Co", "brand": "Conde Nast", "description": [],
         "category": [store, "Technology"], "date": "June 1, 2004"},
        {"asin": "A2", "title": "duplicate row", "brand": "x", "category": [store]},
        {"asin": "A7", "title": "not reviewed", "category": [store, "Other"]},
    ]
    with gzip.open(root / f"meta_{category}.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(m) for m in meta) + "\n")
    return root


def test_amazon_loader_repairs_titles_and_counts_every_fault(tmp_path):
    ds = load_amazon(write_amazon(tmp_path / "books"))
    assert ds.name == "amazon-2018-books"
    assert (ds.domain.item, ds.domain.items, ds.domain.user) == ("book", "books", "reader")
    assert ds.report.skipped == {"bad_review_line": 1, "duplicate_review": 1, "duplicate_meta": 1,
                                 "title_rebuilt": 1, "item_without_meta": 1}
    items = ds.items.set_index("item_id")
    assert items.loc["A1", "title"] == "Hearst Magazines: Country Living is your guide to creating the ..."
    assert items.loc["A1", "text"].startswith("Country Living is") and "<b>" not in items.loc["A1", "text"]
    assert items.loc["A1", "brand"] == "Hearst Magazines" and items.loc["A1", "genres"] == ["Home & Garden", "Design"]
    assert pd.isna(items.loc["A1", "year"]) and items.loc["A2", "year"] == 2004
    assert items.loc["A2", "title"] == "Wired & Co" and items.loc["A2", "brand"] == "Conde Nast"
    assert items.loc["A9", "title"] == "A9" and items.loc["A9", "genres"] == []  # reviewed, no metadata
    assert "A7" not in items.index  # metadata of items nobody reviewed is not part of the catalogue
    u1 = ds.events[ds.events["user_id"] == "U1"].set_index("item_id")
    assert len(u1) == 2 and u1.loc["A1", "value"] == 5.0 and u1.loc["A1", "behavior"] == "liked"  # earliest kept
    assert list(ds.users["user_id"]) == ["U1", "U2", "U3"] and ds.profile("U1") == {}  # no reviewer names


def test_amazon_generic_category_and_known_count_check(tmp_path):
    ds = load_amazon(write_amazon(tmp_path / "tools", "Tools_and_Home_Improvement"))
    assert ds.name == "amazon-2018-tools-and-home-improvement"
    assert (ds.domain.item, ds.domain.user) == ("product", "customer")
    mags = write_amazon(tmp_path / "mags", "Magazine_Subscriptions")
    facts = r"Magazine_Subscriptions should have \{'users': 348, 'items': 157, 'reviews': 2375\}"
    with pytest.raises(DataError, match=facts):
        load_amazon(mags)
    assert load_amazon(mags, check=False).domain.item == "magazine"
    (tmp_path / "bad").mkdir()
    with pytest.raises(DataError, match="expected one meta_<Category>"):
        load_amazon(tmp_path / "bad")


def test_amazon_title_helpers():
    assert is_broken_title(BROKEN) and is_broken_title("") and is_broken_title(None) and is_broken_title("...")
    assert not is_broken_title("Woman's Day") and not is_broken_title("SmartMoney (1-year)")
    assert strip_html("<p>Food &amp; <i>Wine</i></p>") == "Food & Wine"
    assert rebuild_title(None, None, "B00X") == "B00X" and rebuild_title("Meredith", "", "B00X") == "Meredith"


def test_resolve_amazon_by_name_from_env(tmp_path, monkeypatch):
    write_amazon(tmp_path / "amazon" / "amazon-2018-books")
    monkeypatch.setenv(AMAZON_ENV, str(tmp_path / "amazon"))
    ds = resolve_dataset("amazon-2018-books")
    assert ds.domain.item == "book" and len(ds.items) == 3
    with pytest.raises(DataError, match="amazon-2018-software: no folder with meta_<Category>"):
        resolve_dataset("amazon-2018-software")


def test_real_magazine_files_match_the_published_facts():
    root = real_data_dir(os.environ.get(AMAZON_ENV), SHARED_DATA / "amazon-2018-magazine-subscriptions",
                         "meta_Magazine_Subscriptions.json.gz")
    if root is None:
        pytest.skip(f"real Amazon 2018 Magazine_Subscriptions files not available (set {AMAZON_ENV})")
    ds = load_amazon(root)  # checks 348 users, 157 items, 2,375 review rows
    assert ds.report.skipped["duplicate_review"] == 73 and len(ds.events) == 2375 - 73
    assert ds.report.skipped["item_without_meta"] == 6 and ds.report.skipped["title_rebuilt"] == 148
    assert not any(is_broken_title(t) for t in ds.items["title"])
    assert "Magazine Subscriptions" not in {g for gs in ds.items["genres"] for g in gs}  # the store root is gone
    assert ds.items["brand"].notna().sum() >= 148 and ds.domain.user == "reader"


# --- Downloads from local archives -------------------------------------------------------------------


def zip_folder(src: Path, path: Path, top: str) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"{top}/{f.name}")
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_unpinned_checksum_is_refused_with_the_computed_md5(tmp_path):
    archive = tmp_path / "ml-latest-small.zip"
    md5 = zip_folder(write_ml_csv(tmp_path / "src"), archive, "ml-latest-small")
    with pytest.raises(DataError, match=f"no checksum is pinned .* its md5 is {md5}. Verify it and pass --md5 {md5}"):
        download_dataset("ml-latest-small", tmp_path / "out", urls=(archive.as_uri(),))
    assert not (tmp_path / "out").exists()
    dest = download_dataset("ml-latest-small", tmp_path / "out", urls=(archive.as_uri(),), md5s=(md5,))
    assert len(load_movielens("ml-latest-small", dest).events) == 3
    with pytest.raises(DataError, match="needs 1 url"):
        download_dataset("ml-latest-small", tmp_path / "x", urls=("a", "b"))


def test_amazon_download_fetches_both_files(tmp_path, monkeypatch):
    src = write_amazon(tmp_path / "src", "Movies_and_TV")
    (src / "Movies_and_TV_5.json").rename(src / "plain.json")
    with gzip.open(src / "Movies_and_TV_5.json.gz", "wt") as f:  # upstream serves both files gzipped
        f.write((src / "plain.json").read_text())
    files = [src / "Movies_and_TV_5.json.gz", src / "meta_Movies_and_TV.json.gz"]
    md5s = [hashlib.md5(p.read_bytes()).hexdigest() for p in files]
    monkeypatch.setenv("LLMREC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(AMAZON_ENV, raising=False)
    args = ["data", "download", "amazon-2018-movies-and-tv", "--url", ",".join(p.as_uri() for p in files)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "no checksum is pinned" in refused.output
    res = CliRunner().invoke(app, args + ["--md5", ",".join(md5s)])
    assert res.exit_code == 0, res.output
    ds = resolve_dataset("amazon-2018-movies-and-tv")
    assert ds.report.skipped["duplicate_review"] == 1 and ds.domain.user == "viewer"


def test_download_then_evaluate_quick_by_name(ml100k, tmp_path, monkeypatch):
    """`llmrec data download ml-latest-small` from a local archive, then `evaluate --dataset ml-latest-small`."""
    archive = tmp_path / "ml-latest-small.zip"
    md5 = zip_folder(write_ml_csv(tmp_path / "src", ml100k), archive, "ml-latest-small")
    monkeypatch.setenv("LLMREC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(MOVIELENS_ENV, raising=False)
    res = CliRunner().invoke(app, ["data", "download", "ml-latest-small", "--url", archive.as_uri(), "--md5", md5])
    assert res.exit_code == 0, res.output
    assert Path(res.output.strip()) == tmp_path / "home" / "datasets" / "ml-latest-small"
    out = tmp_path / "reports" / "small.json"
    res = CliRunner().invoke(app, ["evaluate", "--dataset", "ml-latest-small", "--out", str(out), "--quick",
                                   "--no-llm", "--models", "popularity"])
    assert res.exit_code == 0, res.output
    from llmrec.bench import read_records

    recs = read_records(out)
    assert {r["model"] for r in recs} == {"popularity"}
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["evaluate_config"]["dataset"] == "ml-latest-small" and settings["complete"]


@pytest.mark.slow
def test_download_then_evaluate_quick_trains_the_models(ml100k, tmp_path, monkeypatch):
    archive = tmp_path / "ml-latest-small.zip"
    md5 = zip_folder(write_ml_csv(tmp_path / "src", ml100k), archive, "ml-latest-small")
    monkeypatch.setenv("LLMREC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(MOVIELENS_ENV, raising=False)
    assert CliRunner().invoke(app, ["data", "download", "ml-latest-small", "--url", archive.as_uri(),
                                    "--md5", md5]).exit_code == 0
    out = tmp_path / "reports" / "small.json"
    models = "popularity,sasrec_ce,three_tower_notag,three_tower_heuristic_tags"
    res = CliRunner().invoke(app, ["evaluate", "--dataset", "ml-latest-small", "--out", str(out), "--quick",
                                   "--no-llm", "--models", models])
    assert res.exit_code == 0, res.output
    from llmrec.bench import read_records

    assert {r["model"] for r in read_records(out)} == set(models.split(","))
