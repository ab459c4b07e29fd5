import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llmrec.cli import app
from llmrec.config import DataConfig
from llmrec.data import DataError, load_dataset_dir, resolve_dataset
from llmrec.data.behaviors import EventMeaning
from llmrec.data.ingest import import_tables, parse_mapping, parse_timestamps

RATING = EventMeaning(value_meaning="rating")

MAP = {"user_id": "uid", "item_id": "movie", "timestamp": "ts", "value": "rating", "title": "name",
       "genres": "cats", "year": "yr"}
ITEMS = "movie,name,cats,yr\n1,Toy Story,Animation|Comedy,1995\n2,Heat,Action|Crime,1995\n3,Casino,Drama,1995\n"
GOOD = "uid,movie,ts,rating\nu1,1,874965478,5\nu1,2,1998-03-01T10:00:00+02:00,3\nu2,3,874965479,1\n"


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def load(tmp_path, events, items=ITEMS, strict=False, **kw):
    return import_tables(write(tmp_path, "events.csv", events), write(tmp_path, "items.csv", items),
                         mapping=MAP, strict=strict, **{"how": RATING, **kw})


def test_clean_import_maps_columns_times_and_behaviours(tmp_path):
    ds = load(tmp_path, GOOD)
    assert ds.report.total_skipped == 0
    ev = ds.events.set_index("item_id")
    assert str(ds.events["timestamp"].dtype) == "datetime64[s, UTC]"
    assert ev.loc["2", "timestamp"] == pd.Timestamp("1998-03-01T08:00:00Z")  # offset converted to UTC
    assert ev.loc["1", "timestamp"] == pd.Timestamp(874965478, unit="s", tz="UTC")
    assert ev["behavior"].to_dict() == {"1": "liked", "2": "watched", "3": "disliked"}
    assert ds.items.set_index("item_id").loc["1", "genres"] == ["Animation", "Comedy"]
    assert list(ds.users["user_id"]) == ["u1", "u2"]


def test_rating_thresholds_come_from_data_config(tmp_path):
    ds = load(tmp_path, GOOD, config=DataConfig(like_threshold=5.0, dislike_threshold=3.0))
    assert ds.events.set_index("item_id")["behavior"].to_dict() == {"1": "liked", "2": "disliked",
                                                                     "3": "disliked"}


def test_behavior_column_is_used_as_is(tmp_path):
    ev = "uid,movie,ts,action\nu1,1,874965478,purchased\nu1,2,874965479,clicked\n"
    ds = import_tables(write(tmp_path, "e.csv", ev), write(tmp_path, "i.csv", ITEMS),
                       mapping={**MAP, "behavior": "action", "value": "none"})
    assert list(ds.events["behavior"]) == ["purchased", "clicked"]
    assert ds.events["value"].isna().all()


@pytest.mark.parametrize(
    "events, reason, row, field",
    [
        (GOOD + "u3,1,not-a-time,4\n", "bad_timestamp", 4, "timestamp"),
        (GOOD + "u3,99,874965478,4\n", "unknown_item", 4, "item_id"),
        (GOOD + "u1,1,874965478,5\n", "duplicate_event", 4, "timestamp"),
        (GOOD + "u3,1,,4\n", "empty_field", 4, "timestamp"),
        (GOOD + ",1,874965478,4\n", "empty_field", 4, "user_id"),
        (GOOD + "u3,1,874965478,five\n", "bad_value", 4, "value"),
    ],
)
def test_bad_event_rows_are_skipped_and_counted_or_strict_errors(tmp_path, events, reason, row, field):
    ds = load(tmp_path, events)
    assert ds.report.skipped == {reason: 1}
    assert ds.report.examples[reason] == [f"events.csv:row {row} ({field})"]
    assert len(ds.events) == 3
    with pytest.raises(DataError, match=rf"events\.csv: row {row}, field '{field}'"):
        load(tmp_path, events, strict=True)


@pytest.mark.parametrize(
    "items, reason, row, field, n_items",
    [
        (ITEMS + "4,,Drama,1990\n", "empty_field", 4, "title", 3),
        (ITEMS + "3,Casino again,Drama,1995\n", "duplicate_item", 4, "item_id", 3),
        (ITEMS + "4,Fargo,Drama,19x6\n", "bad_year", 4, "year", 4),  # the item stays, without its year
    ],
)
def test_bad_item_rows_are_skipped_and_counted_or_strict_errors(tmp_path, items, reason, row, field, n_items):
    ds = load(tmp_path, GOOD, items)
    assert ds.report.skipped == {reason: 1}
    assert ds.report.examples[reason] == [f"items.csv:row {row} ({field})"]
    assert len(ds.items) == n_items
    with pytest.raises(DataError, match=rf"items\.csv: row {row}, field '{field}'"):
        load(tmp_path, GOOD, items, strict=True)


def test_bad_year_keeps_item_without_year(tmp_path):
    ds = load(tmp_path, GOOD, ITEMS + "4,Fargo,Drama,19x6\n")
    assert pd.isna(ds.items.set_index("item_id").loc["4", "year"])


def test_duplicate_and_empty_users_are_counted(tmp_path):
    users = write(tmp_path, "users.csv", "uid,age\nu1,24\nu1,25\n,30\nu2,40\n")
    ds = import_tables(write(tmp_path, "events.csv", GOOD), write(tmp_path, "items.csv", ITEMS), users, MAP, how=RATING)
    assert ds.report.skipped == {"duplicate_user": 1, "empty_field": 1}
    assert ds.profile("u1") == {"age": "24"}


def test_many_skips_keep_five_examples_and_the_full_count(tmp_path):
    ds = load(tmp_path, GOOD + "".join(f"u9,77,87496547{k},4\n" for k in range(8)))
    assert ds.report.skipped == {"unknown_item": 8}
    assert len(ds.report.examples["unknown_item"]) == 5


def test_missing_columns_name_file_and_column(tmp_path):
    with pytest.raises(DataError, match=r"events\.csv: missing column 'ts'.*'timestamp'"):
        load(tmp_path, "uid,movie,rating\nu1,1,5\n")
    with pytest.raises(DataError, match=r"items\.csv: missing column 'name'"):
        load(tmp_path, GOOD, "movie,cats\n1,Drama\n")
    with pytest.raises(DataError, match=r"events\.csv: --value-meaning rating needs a value column, none named "
                                        r"'rating'; map it with --map value=<column>"):
        load(tmp_path, "uid,movie,ts\nu1,1,874965478\n")
    with pytest.raises(DataError, match=r"events\.csv: no behaviour for the events: .*--behavior-column COL.*"
                                        r"--behavior NAME"):
        load(tmp_path, "uid,movie,ts\nu1,1,874965478\n", how=EventMeaning())


def test_wrong_encoding_names_file_and_byte_offset(tmp_path):
    items = ITEMS + "4,Amélie,Comedy,2001\n"
    ipath = write(tmp_path, "items.csv", items, encoding="latin-1")
    epath = write(tmp_path, "events.csv", GOOD)
    offset = items.encode("latin-1").index("é".encode("latin-1"))
    with pytest.raises(DataError, match=rf"items\.csv: not valid utf-8 at byte offset {offset} \(line 5"):
        import_tables(epath, ipath, mapping=MAP, how=RATING)
    ds = import_tables(epath, ipath, mapping=MAP, encoding="latin-1", how=RATING)
    assert "Amélie" in set(ds.items["title"])


def test_parquet_inputs_with_native_types(tmp_path):
    events = pd.DataFrame({"uid": ["u1", "u2"], "movie": [1, 2], "rating": [5.0, 2.0],
                           "ts": pd.to_datetime(["1998-01-01 10:00:00", "1998-01-02 11:30:15.7"], format="ISO8601")})
    items = pd.DataFrame({"movie": [1, 2], "name": ["Toy Story", "Heat"], "cats": [["Animation"], ["Action"]],
                          "yr": [1995, 1995]})
    pq.write_table(pa.Table.from_pandas(events), tmp_path / "e.parquet")
    pq.write_table(pa.Table.from_pandas(items), tmp_path / "i.parquet")
    ds = import_tables(tmp_path / "e.parquet", tmp_path / "i.parquet", mapping=MAP, how=RATING)
    assert list(ds.events["item_id"]) == ["1", "2"]
    assert ds.events["timestamp"].iloc[1] == pd.Timestamp("1998-01-02 11:30:15", tz="UTC")
    assert ds.items.set_index("item_id").loc["2", "genres"] == ["Action"]


def test_timestamp_parsing_rules():
    got = parse_timestamps(pd.Series(["874965478", "1998-03-01", "1998-03-01T10:00:00-05:00", "x", "",
                                      "874965478000"]))
    assert got.iloc[0] == pd.Timestamp(874965478, unit="s", tz="UTC")
    assert got.iloc[1] == pd.Timestamp("1998-03-01", tz="UTC")  # naive = UTC
    assert got.iloc[2] == pd.Timestamp("1998-03-01T15:00:00", tz="UTC")
    assert got.iloc[3:].isna().all()  # garbage, empty, and milliseconds (not silently misread as seconds)


def test_mapping_parser_rejects_unknown_names():
    assert parse_mapping("user_id=uid, items.item_id=movie_id") == {"user_id": "uid", "items.item_id": "movie_id"}
    with pytest.raises(ValueError, match="unknown canonical column"):
        parse_mapping("userid=uid")
    with pytest.raises(ValueError, match="table must be one of"):
        parse_mapping("movies.item_id=x")
    with pytest.raises(ValueError, match="not NAME=COLUMN"):
        parse_mapping("user_id")


def test_table_specific_mapping(tmp_path):
    items = ITEMS.replace("movie,", "movie_id,", 1)
    ds = import_tables(write(tmp_path, "e.csv", GOOD), write(tmp_path, "i.csv", items),
                       mapping={**MAP, "items.item_id": "movie_id"}, how=RATING)
    assert len(ds.events) == 3


def test_round_trip_of_ml100k_slice_through_csv(tiny, tmp_path):
    ev = tiny.events.assign(timestamp=tiny.events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    ev.to_csv(tmp_path / "events.csv", index=False)
    items = tiny.items.assign(genres=tiny.items["genres"].map("|".join))
    items.to_csv(tmp_path / "items.csv", index=False)
    tiny.users.to_csv(tmp_path / "users.csv", index=False)
    ds = import_tables(tmp_path / "events.csv", tmp_path / "items.csv", tmp_path / "users.csv", how=RATING)
    assert ds.report.total_skipped == 0
    pd.testing.assert_frame_equal(ds.events, tiny.events)
    back = load_dataset_dir(ds.save(tmp_path / "out"))
    pd.testing.assert_frame_equal(back.events, tiny.events)
    assert back.items[["item_id", "title"]].equals(tiny.items[["item_id", "title"]])
    assert list(back.items["genres"]) == list(tiny.items["genres"])
    assert back.profile("3") == tiny.profile("3")


def test_import_cli_writes_a_dataset_folder_and_prints_the_report(tmp_path):
    e = write(tmp_path, "events.csv", GOOD + "u3,99,874965478,4\n")
    i = write(tmp_path, "items.csv", ITEMS)
    mapping = ",".join(f"{k}={v}" for k, v in MAP.items())
    args = ["data", "import", "--events", str(e), "--items", str(i), "--map", mapping, "--out", str(tmp_path / "ds"),
            "--value-meaning", "rating"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["report"]["skipped"] == {"unknown_item": 1} and out["events"] == 3
    assert len(resolve_dataset(tmp_path / "ds").events) == 3
    strict = CliRunner().invoke(app, args + ["--strict"])
    assert strict.exit_code == 2 and "row 4, field 'item_id'" in strict.output


def test_malformed_csv_names_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"events\.csv: cannot parse as CSV: .*line 5"):
        load(tmp_path, GOOD + "u3,1,874965478,4,extra\n")


def test_json_lines_import_with_lists_brand_and_years_from_titles(tmp_path):
    import gzip

    events = "\n".join(json.dumps(r) for r in [
        {"uid": "u1", "movie": 1, "ts": 874965478, "rating": 5},
        {"uid": "u1", "movie": 2, "ts": "1998-03-01T10:00:00Z", "rating": 1.0},
        {"uid": "u2", "movie": 3, "ts": 874965479, "rating": 3}]) + "\n"
    with gzip.open(tmp_path / "events.jsonl.gz", "wt") as f:
        f.write(events)
    items = [{"movie": 1, "name": "Toy Story (1995)", "cats": ["Animation", "Comedy"], "publisher": "Pixar"},
             {"movie": 2, "name": "Heat (1995)", "cats": [], "publisher": ""},
             {"movie": 3, "name": "Babylon 5", "cats": ["Sci-Fi"]}]
    write(tmp_path, "items.json", "\n".join(json.dumps(r) for r in items) + "\n\n")
    mapping = {k: v for k, v in MAP.items() if k != "year"} | {"brand": "publisher"}
    ds = import_tables(tmp_path / "events.jsonl.gz", tmp_path / "items.json", mapping=mapping, how=RATING)
    assert ds.report.total_skipped == 0 and len(ds.events) == 3
    it = ds.items.set_index("item_id")
    assert it.loc["1", "title"] == "Toy Story" and it.loc["1", "year"] == 1995  # detected: 2 of 3 titles
    assert it.loc["3", "title"] == "Babylon 5" and pd.isna(it.loc["3", "year"])
    assert it.loc["1", "genres"] == ["Animation", "Comedy"] and it.loc["2", "genres"] == []
    assert it.loc["1", "brand"] == "Pixar" and it["brand"].isna().sum() == 2
    assert ds.item_index["1"].brand == "Pixar" and ds.item_index["2"].brand is None and ds.item_index["3"].brand is None
    kept = import_tables(tmp_path / "events.jsonl.gz", tmp_path / "items.json", mapping=mapping,
                         year_from_title=False, how=RATING)
    assert kept.items.set_index("item_id").loc["1", "title"] == "Toy Story (1995)"
    assert kept.items["year"].isna().all()


def test_year_from_title_fills_only_missing_years_when_asked(tmp_path):
    items = "movie,name,cats,yr\n1,Toy Story (1995),Animation,\n2,Heat (1995),Action,1996\n3,Casino,Drama,1995\n"
    auto = load(tmp_path, GOOD, items)  # a year column is mapped: titles stay as they are
    assert auto.items.set_index("item_id").loc["1", "title"] == "Toy Story (1995)"
    ds = load(tmp_path, GOOD, items, year_from_title=True)
    it = ds.items.set_index("item_id")
    assert it.loc["1", "year"] == 1995 and it.loc["2", "year"] == 1996  # the column wins where it has a value
    assert list(it["title"]) == ["Toy Story", "Heat", "Casino"]


def test_bad_json_lines_name_file_and_line(tmp_path):
    write(tmp_path, "items.jsonl", '{"movie": 1, "name": "A"}\n{"movie": 2,\n')
    with pytest.raises(DataError, match=r"items\.jsonl: line 2 is not JSON"):
        import_tables(write(tmp_path, "events.csv", GOOD), tmp_path / "items.jsonl", mapping=MAP, how=RATING)
    write(tmp_path, "items.jsonl", '[1, 2]\n')
    with pytest.raises(DataError, match=r"items\.jsonl: line 1 is a JSON list, expected an object"):
        import_tables(write(tmp_path, "events.csv", GOOD), tmp_path / "items.jsonl", mapping=MAP, how=RATING)


def test_import_cli_reads_json_lines_and_year_flag(tmp_path):
    e = write(tmp_path, "events.csv", GOOD)
    i = write(tmp_path, "items.jsonl", "\n".join(json.dumps({"movie": n, "name": f"M{n} (199{n})", "cats": "A,B"})
                                                  for n in (1, 2, 3)) + "\n")
    mapping = "user_id=uid,item_id=movie,timestamp=ts,value=rating,title=name,genres=cats"
    args = ["data", "import", "--events", str(e), "--items", str(i), "--map", mapping, "--genre-sep", ",", "--value-meaning", "rating"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    a = load_dataset_dir(tmp_path / "a").items.set_index("item_id")
    assert a.loc["2", "title"] == "M2" and a.loc["2", "year"] == 1992 and a.loc["2", "genres"] == ["A", "B"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "b"), "--no-year-from-title"])
    assert res.exit_code == 0, res.output
    assert load_dataset_dir(tmp_path / "b").items.set_index("item_id").loc["2", "title"] == "M2 (1992)"
