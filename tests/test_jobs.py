"""Sharded batch jobs: deterministic shards, atomic writes, kill-and-resume, the Ray executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from llmrec.config import JobConfig
from llmrec.jobs import JobError, plan_shards, read_manifest, read_shards, run_sharded

REPO = Path(__file__).resolve().parents[1]
KEYS = [str(u) for u in range(1, 41)]


def two_rows_per_key(keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [k for k in keys for _ in range(2)], "n": [int(k) * 10 + j for k in keys for j in range(2)]})


def test_shards_are_deterministic_and_cover_keys_once():
    a = plan_shards(list(reversed(KEYS)) + KEYS[:5], shard_size=7)
    b = plan_shards(KEYS, shard_size=7)
    assert a == b
    flat = [k for s in a for k in s.keys]
    assert sorted(flat) == sorted(KEYS) and len(flat) == len(set(flat))
    assert [len(s.keys) for s in a] == [7] * 5 + [5]


def test_config_rejects_bad_values():
    with pytest.raises(ValidationError, match="shard_size"):
        JobConfig(shard_size=0)
    with pytest.raises(ValidationError, match="executor"):
        JobConfig(executor="spark")
    with pytest.raises(ValidationError, match="shard_sizes"):
        JobConfig(shard_sizes=3)
    cfg = JobConfig(shard_size=3, ray_num_cpus=1)
    assert JobConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_local_job_writes_shards_manifest_and_rows(tmp_path):
    cfg = JobConfig(shard_size=8, progress=False)
    res = run_sharded(KEYS, two_rows_per_key, tmp_path, cfg, meta={"stage": "test"})
    assert (res.n_shards, res.n_processed, res.n_resumed, res.n_rows) == (5, 5, 0, 80)
    df = read_shards(tmp_path)
    assert df.groupby("user_id").size().eq(2).all() and set(df["user_id"]) == set(KEYS)
    man = read_manifest(tmp_path)
    assert man["complete"] and man["job_config"]["shard_size"] == 8 and man["meta"] == {"stage": "test"}
    assert [s["n_rows"] for s in man["shards"]] == [16] * 5
    # A second run finds everything done and calls nothing.
    calls = []
    res2 = run_sharded(KEYS, lambda ks: calls.append(ks) or two_rows_per_key(ks), tmp_path, cfg, meta={"stage": "test"})
    assert calls == [] and res2.n_resumed == 5 and res2.n_rows == 80


def test_key_column_and_row_coverage_are_checked(tmp_path):
    cfg = JobConfig(shard_size=8, progress=False, key_column="uid")
    with pytest.raises(JobError, match="no 'uid' column"):
        run_sharded(KEYS, two_rows_per_key, tmp_path / "a", cfg)
    drop_first = lambda ks: pd.DataFrame({"user_id": ks[1:]})  # noqa: E731 - loses a user
    with pytest.raises(JobError, match="missing"):
        run_sharded(KEYS, drop_first, tmp_path / "b", JobConfig(shard_size=8, progress=False))


def test_rerun_with_other_keys_or_meta_is_refused(tmp_path):
    cfg = JobConfig(shard_size=8, progress=False)
    run_sharded(KEYS, two_rows_per_key, tmp_path, cfg, meta={"prompt": "a"})
    with pytest.raises(JobError, match="key_hash"):
        run_sharded(KEYS[:-1], two_rows_per_key, tmp_path, cfg, meta={"prompt": "a"})
    with pytest.raises(JobError, match="shard_size"):
        run_sharded(KEYS, two_rows_per_key, tmp_path, JobConfig(shard_size=9, progress=False), meta={"prompt": "a"})
    with pytest.raises(JobError, match="meta"):
        run_sharded(KEYS, two_rows_per_key, tmp_path, cfg, meta={"prompt": "b"})


def test_partial_tmp_and_corrupt_files_are_ignored_and_redone(tmp_path):
    cfg = JobConfig(shard_size=8, progress=False)
    run_sharded(KEYS, two_rows_per_key, tmp_path, cfg)
    (tmp_path / "shard-00001.parquet").write_bytes(b"PAR1 truncated garbage")  # corrupt final file
    (tmp_path / "shard-00003.parquet").unlink()  # lost shard
    (tmp_path / ".shard-00003.parquet.999.tmp").write_bytes(b"half a shard")  # killed mid-write
    calls = []
    res = run_sharded(KEYS, lambda ks: calls.append(ks) or two_rows_per_key(ks), tmp_path, cfg)
    assert sorted(c[0] for c in calls) == sorted([plan_shards(KEYS, 8)[1].keys[0], plan_shards(KEYS, 8)[3].keys[0]])
    assert res.n_resumed == 3 and not list(tmp_path.glob("*.tmp"))
    df = read_shards(tmp_path)
    assert len(df) == 80 and df.groupby("user_id").size().eq(2).all()


def test_read_shards_refuses_unfinished_job(tmp_path):
    cfg = JobConfig(shard_size=8, progress=False)
    run_sharded(KEYS, two_rows_per_key, tmp_path, cfg)
    (tmp_path / "shard-00002.parquet").unlink()
    with pytest.raises(JobError, match="shard 2"):
        read_shards(tmp_path)
    assert len(read_shards(tmp_path, allow_partial=True)) == 64


def test_actor_factory_builds_process_once_per_run(tmp_path):
    built = []

    def factory():
        built.append(1)  # stands in for creating a vLLM engine
        return two_rows_per_key

    res = run_sharded(KEYS, None, tmp_path, JobConfig(shard_size=4, progress=True), actor_factory=factory)
    assert res.n_processed == 10 and built == [1] and res.keys_per_min > 0
    with pytest.raises(JobError, match="exactly one"):
        run_sharded(KEYS, two_rows_per_key, tmp_path, JobConfig(), actor_factory=factory)


_KILLABLE_JOB = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from llmrec.config import JobConfig
    from llmrec.jobs import run_sharded

    def slow(keys):
        time.sleep(0.4)  # an LLM call per shard
        return pd.DataFrame({"user_id": keys, "pid": [0] * len(keys)})

    if __name__ == "__main__":
        run_sharded([str(u) for u in range(1, 41)], slow, sys.argv[1], JobConfig(shard_size=4, progress=False))
    """
)


def test_kill_and_resume_loses_and_duplicates_no_key(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_KILLABLE_JOB)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 60
        while len(list(out.glob("shard-*.parquet"))) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no finally: as a crash or an OOM kill
    finally:
        proc.wait(timeout=10)
    finished = len(list(out.glob("shard-*.parquet")))
    assert 3 <= finished < 10, "the job must be killed mid-way"
    calls = []
    res = run_sharded([str(u) for u in range(1, 41)], lambda ks: calls.append(ks) or pd.DataFrame({"user_id": ks, "pid": [1] * len(ks)}),
                      out, JobConfig(shard_size=4, progress=False))
    assert res.n_resumed == finished and len(calls) == 10 - finished
    df = read_shards(out)
    assert sorted(df["user_id"], key=int) == [str(u) for u in range(1, 41)]  # every key exactly once
    assert (df["pid"] == 0).sum() == 4 * finished  # finished shards were kept, not recomputed


def _ray_factory():
    return two_rows_per_key


@pytest.mark.slow
def test_ray_executor_writes_same_shards_and_resumes(tmp_path):
    pytest.importorskip("ray")
    cfg = JobConfig(shard_size=4, progress=False, executor="ray", ray_num_cpus=2)
    keys = KEYS[:16]
    res = run_sharded(keys, None, tmp_path / "ray", cfg, actor_factory=_ray_factory)
    assert res.n_processed == 4
    (tmp_path / "ray" / "shard-00002.parquet").unlink()
    res2 = run_sharded(keys, None, tmp_path / "ray", cfg, actor_factory=_ray_factory)
    assert (res2.n_resumed, res2.n_processed) == (3, 1)
    local = run_sharded(keys, two_rows_per_key, tmp_path / "local", cfg.model_copy(update={"executor": "local"}))
    assert local.n_rows == res2.n_rows
    pd.testing.assert_frame_equal(read_shards(tmp_path / "ray"), read_shards(tmp_path / "local"))


def test_sum_shard_stats_adds_numbers_and_caps_example_lists():
    import json as _json
    from dataclasses import dataclass, field

    import pandas as pd

    from llmrec.jobs import SHARD_STATS, sum_shard_stats

    @dataclass
    class Stats:
        n: int = 0
        seconds: float = 0.0
        errors: list = field(default_factory=list)

    shards = [{"n": 2, "seconds": 0.5, "errors": ["a", "b"]}, {"n": 3, "seconds": 1.0, "errors": ["c", "d"]}]
    rows = [_json.dumps(s) for s in shards for _ in range(s["n"])]  # the same JSON on every row of a shard
    total = sum_shard_stats(pd.DataFrame({SHARD_STATS: rows}), Stats, keep=3)
    assert (total.n, total.seconds, total.errors) == (5, 1.5, ["a", "b", "c"])
