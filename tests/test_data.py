import pandas as pd
import pytest

from llmrec.data import DataError, load_dataset_dir, resolve_dataset


def test_dataset_folder_round_trip_keeps_canonical_types(tiny, tmp_path):
    folder = tiny.save(tmp_path / "tiny")
    back = resolve_dataset(folder)
    assert str(back.events["timestamp"].dtype) == "datetime64[s, UTC]"
    pd.testing.assert_frame_equal(back.events, tiny.events)
    assert list(back.items["genres"]) == list(tiny.items["genres"])
    assert back.items["year"].equals(tiny.items["year"])
    assert back.profile("1") == tiny.profile("1")
    assert back.summary()["events"] == len(tiny.events)


def test_not_a_dataset_folder_names_the_missing_file(tmp_path):
    with pytest.raises(DataError, match="missing events.parquet"):
        load_dataset_dir(tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        resolve_dataset(tmp_path / "nowhere")


def test_synthetic_ml100k_has_the_raw_format_and_the_tiny_users(ml100k, tiny, synthetic_ml100k_dir):
    from llmrec.data import ML100K_GENRES

    fields = (synthetic_ml100k_dir / "u.item").read_text(encoding="latin-1").splitlines()[0].split("|")
    assert len(fields) == 5 + len(ML100K_GENRES) and fields[1] == "Toy Story (1995)" and fields[2] == "01-Jan-1995"
    assert len((synthetic_ml100k_dir / "u.data").read_text().splitlines()[0].split("\t")) == 4
    counts = tiny.events.groupby("user_id").size()
    assert sorted(counts.index, key=int) == [str(u) for u in range(1, 21)] and counts.min() >= 5
    assert ml100k.item_index["1"].title == "Toy Story" and ml100k.item_index["1"].year == 1995
    assert ml100k.domain.item == "movie" and set(ml100k.events["behavior"]) == {"liked", "watched", "disliked"}
    years = ml100k.events["timestamp"].dt.year
    assert years.max() - years.min() >= 2 and ml100k.events["item_id"].nunique() > 150


def test_count_check_applies_to_real_files_only(synthetic_ml100k_dir, tmp_path):
    import shutil

    from llmrec.data import load_ml100k

    copy = shutil.copytree(synthetic_ml100k_dir, tmp_path / "copy")
    assert len(load_ml100k(copy).events) == sum(1 for _ in (copy / "u.data").open())  # SYNTHETIC marker: no check
    (copy / "SYNTHETIC").unlink()
    with pytest.raises(DataError, match=r"should have \{'users': 943, 'items': 1682, 'events': 100000\}"):
        load_ml100k(copy)
    assert load_ml100k(copy, expected=None).name == "ml-100k"


def test_name_lookup_reads_the_configured_folder(ml100k):
    # The session points $LLMREC_ML100K_DIR at the synthetic set, so `--dataset ml-100k` runs anywhere.
    assert len(resolve_dataset("ml-100k").events) == len(ml100k.events)
    with pytest.raises(DataError, match=r"unknown dataset 'ml-2m'.*ml-latest-small.*amazon-2018-<category>"):
        resolve_dataset("ml-2m")


def test_real_ml100k_matches_the_known_facts(real_ml100k):
    assert real_ml100k.summary()["users"] == 943 and len(real_ml100k.items) == 1682
    assert real_ml100k.item_index["50"].title == "Star Wars" and real_ml100k.item_index["50"].year == 1977
