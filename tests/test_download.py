import hashlib
import zipfile

import pytest
from typer.testing import CliRunner

from llmrec.cli import app
from llmrec.data import DataError, load_ml100k
from llmrec.data.download import ML100K_FILES, download_ml100k

SHARED_FILES = ML100K_FILES + ("u.genre",)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, synthetic_ml100k_dir):
    """An ml-100k.zip laid out like GroupLens' (one top folder), built from the synthetic raw files."""
    src = synthetic_ml100k_dir
    path = tmp_path_factory.mktemp("zip") / "ml-100k.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in SHARED_FILES:
            zf.write(src / name, f"ml-100k/{name}")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_and_unpacks_into_dest(archive, tmp_path):
    path, md5 = archive
    dest = download_ml100k(tmp_path / "data" / "ml-100k", url=path.as_uri(), md5=md5)
    assert sorted(p.name for p in dest.iterdir()) == sorted(SHARED_FILES)
    assert len(load_ml100k(dest, expected=None).events) == sum(1 for _ in (dest / "u.data").open())
    with pytest.raises(DataError, match="should have"):  # the known-facts check is on by default
        load_ml100k(dest)
    assert [p.name for p in dest.parent.iterdir()] == ["ml-100k"]  # no temporary leftovers


def test_checksum_mismatch_writes_nothing(archive, tmp_path):
    path, _ = archive
    with pytest.raises(DataError, match="checksum mismatch.*expected md5 0{32}"):
        download_ml100k(tmp_path / "ml-100k", url=path.as_uri(), md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_existing_copy_is_kept_unless_forced(archive, tmp_path):
    path, md5 = archive
    dest = download_ml100k(tmp_path / "ml-100k", url=path.as_uri(), md5=md5)
    (dest / "marker").write_text("x")
    assert download_ml100k(dest, url=(tmp_path / "missing.zip").as_uri(), md5=md5) == dest  # no fetch at all
    download_ml100k(dest, url=path.as_uri(), md5=md5, force=True)
    assert not (dest / "marker").exists()


def test_not_a_movielens_archive_is_an_error(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "hello")
    md5 = hashlib.md5(bad.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="no u.data"):
        download_ml100k(tmp_path / "out", url=bad.as_uri(), md5=md5)
    with pytest.raises(DataError, match="cannot download"):
        download_ml100k(tmp_path / "out", url=(tmp_path / "nope.zip").as_uri(), md5=md5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_default_dest_is_where_ml100k_dir_looks(archive, tmp_path, monkeypatch):
    from llmrec.data import ML100K_ENV, ml100k_dir

    path, md5 = archive
    monkeypatch.setenv("LLMREC_HOME", str(tmp_path))
    monkeypatch.delenv(ML100K_ENV, raising=False)
    res = CliRunner().invoke(app, ["data", "download", "ml-100k", "--url", path.as_uri(), "--md5", md5])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(ml100k_dir())
    bad = CliRunner().invoke(app, ["data", "download", "ml-2m"])
    assert bad.exit_code == 2 and "unknown dataset" in bad.output
