import pytest

from llmrec.io import atomic_dir


def test_success_replaces_the_folder_and_failure_keeps_the_old_one(tmp_path):
    out = tmp_path / "artifact"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_dir(out, mode=0o755) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("writer died")
    assert (out / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no temporary folder left behind
