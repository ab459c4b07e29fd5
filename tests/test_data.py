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
