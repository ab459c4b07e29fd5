"""Resumable sharded batch jobs: every LLM job (mine interests, explanations, cold start) runs through here.

Keys (user ids) are deduplicated, sorted and cut into fixed-size shards, so the same keys and shard size
always give the same shards. Each shard is written atomically (temp file in the same folder, then rename)
as `shard-NNNNN.parquet`, carrying its own key hash in the Parquet metadata. A restart trusts only such
final files whose hash matches, skips them and redoes the rest; leftover temp files (a job killed
mid-write) are ignored and removed. So a job can be killed at any moment and rerun: no key lost, none
duplicated. `manifest.json` records shard ids, key hashes, row counts, the job config and the caller's
metadata; a rerun against a folder written for other keys, shard size or metadata is refused.

Executors: "local" runs shards in this process; "ray" runs the same shards as a Ray Data pipeline
(`from_items` over shard specs, `map_batches` with an actor class that builds the process function once,
e.g. holding a vLLM engine). Both write shards the same way, so resume works identically.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmrec.errors import JobError  # noqa: F401 (re-exported)
from llmrec.config import JobConfig
from llmrec.progress import progress_bar

Process = Callable[[list[str]], pd.DataFrame]
MANIFEST = "manifest.json"
_META_KEY = b"llmrec_shard"


@dataclass(frozen=True)
class ShardSpec:
    shard_id: int
    keys: tuple[str, ...]

    @property
    def key_hash(self) -> str:
        return hash_keys(self.keys)

    @property
    def file_name(self) -> str:
        return f"shard-{self.shard_id:05d}.parquet"


@dataclass(frozen=True)
class JobResult:
    out_dir: Path
    n_keys: int
    n_shards: int
    n_resumed: int  # shards found finished and skipped
    n_processed: int  # shards processed by this run
    n_rows: int  # rows in all shards
    seconds: float
    keys_per_min: float  # keys processed by this run / minute


def hash_keys(keys: Sequence[str]) -> str:
    """Stable (hashlib, not salted `hash()`) fingerprint of an ordered key list."""
    return hashlib.sha256("\x1f".join(keys).encode()).hexdigest()[:16]


def plan_shards(keys: Sequence[str], shard_size: int) -> list[ShardSpec]:
    """Deduplicate and sort keys, then cut them into shards of `shard_size` (the last may be shorter)."""
    ordered = sorted(set(map(str, keys)))
    return [ShardSpec(i // shard_size, tuple(ordered[i : i + shard_size])) for i in range(0, len(ordered), shard_size)]


def run_sharded(
    keys: Sequence[str],
    process: Process | None,
    out_dir: str | Path,
    config: JobConfig,
    executor: str | None = None,
    actor_factory: Callable[[], Process] | None = None,
    meta: dict[str, Any] | None = None,
) -> JobResult:
    """Run `process` over `keys` in shards under `out_dir`, skipping shards a previous run finished.

    Args:
        process: keys of one shard -> rows, at least one per key, keyed by `config.key_column`.
        executor: "local" or "ray"; default `config.executor`.
        actor_factory: builds the process function once per worker process (e.g. creating the vLLM
            engine); use it instead of `process` when construction is expensive or must not be pickled.
        meta: the caller's job description (stage config, prompt hashes, model); a rerun must match it.
    """
    executor = executor or config.executor
    if executor not in ("local", "ray"):
        raise JobError(f"executor must be 'local' or 'ray', got {executor!r}")
    if (process is None) == (actor_factory is None):
        raise JobError("give exactly one of `process` or `actor_factory`")
    factory = actor_factory if actor_factory is not None else _Constant(process)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(keys, config.shard_size)
    manifest = _start_manifest(out, shards, config, meta or {})
    _remove_temp_files(out)
    todo = [s for s in shards if not _is_finished(out, s)]
    n_todo_keys = sum(len(s.keys) for s in todo)
    t0 = time.perf_counter()
    bar = _progress(config, total=sum(len(s.keys) for s in shards), done=sum(len(s.keys) for s in shards) - n_todo_keys)
    try:
        if executor == "local":
            _run_local(todo, factory, out, config, bar)
        else:
            _run_ray(todo, factory, out, config, bar)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    rows = _finish_manifest(out, manifest, shards)
    return JobResult(
        out_dir=out, n_keys=sum(len(s.keys) for s in shards), n_shards=len(shards), n_resumed=len(shards) - len(todo),
        n_processed=len(todo), n_rows=rows, seconds=seconds,
        keys_per_min=60.0 * n_todo_keys / seconds if seconds > 0 and n_todo_keys else 0.0,
    )


def read_shards(out_dir: str | Path, allow_partial: bool = False) -> pd.DataFrame:
    """All rows of a job folder, in shard order; refuses an unfinished job unless `allow_partial`."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    frames = []
    for s in manifest["shards"]:
        spec = ShardSpec(s["shard_id"], ())  # keys are not needed to read: the hash comes from the manifest
        path = out / spec.file_name
        if not _is_finished(out, spec, expect_hash=s["key_hash"]):
            if allow_partial:
                continue
            raise JobError(f"{out}: shard {s['shard_id']} ({path.name}) is missing or stale; rerun the job to finish it")
        frames.append(pq.read_table(path).to_pandas())
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


SHARD_STATS = "shard_stats"  # column a process may add: its shard's stats dataclass as JSON, on every row
S = TypeVar("S")


def sum_shard_stats(frame: pd.DataFrame, cls: type[S], keep: int) -> S:
    """The `SHARD_STATS` of every shard in `frame` (from `read_shards`) summed into one `cls` dataclass:
    numbers add up, list fields (failure examples) keep the first `keep` entries of all shards."""
    total = cls()
    for part in map(json.loads, frame[SHARD_STATS].unique()):
        for f in fields(total):
            if f.name not in part:
                continue
            mine = getattr(total, f.name)
            if isinstance(mine, list):
                mine.extend((part[f.name] or [])[: max(0, keep - len(mine))])
            else:
                setattr(total, f.name, mine + part[f.name])
    return total


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise JobError(f"{path}: no job manifest; is this a job output folder?")
    return json.loads(path.read_text())


# --- Writing and checking shards ------------------------------------------------------------------


def write_shard(out: Path, spec: ShardSpec, frame: pd.DataFrame, key_column: str) -> int:
    """Check that `frame` covers exactly the shard's keys, then write it atomically; returns its row count."""
    if key_column not in frame.columns:
        raise JobError(f"shard {spec.shard_id}: process returned no {key_column!r} column (got {list(frame.columns)})")
    got = set(frame[key_column].astype(str))
    missing, extra = set(spec.keys) - got, got - set(spec.keys)
    if missing or extra:
        raise JobError(
            f"shard {spec.shard_id}: process must return rows for exactly its keys; "
            f"missing {sorted(missing)[:5]} ({len(missing)}), foreign {sorted(extra)[:5]} ({len(extra)})"
        )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    info = {"shard_id": spec.shard_id, "key_hash": spec.key_hash, "n_keys": len(spec.keys), "n_rows": len(frame)}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(info).encode()})
    final = out / spec.file_name
    tmp = out / f".{spec.file_name}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    tmp.replace(final)  # atomic on POSIX: readers see the old state or the whole shard
    return len(frame)


def _shard_info(path: Path) -> dict[str, Any] | None:
    """The shard's own metadata, or None when the file is absent or unreadable (then it is redone)."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[_META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def _is_finished(out: Path, spec: ShardSpec, expect_hash: str | None = None) -> bool:
    info = _shard_info(out / spec.file_name)
    return info is not None and info.get("key_hash") == (expect_hash or spec.key_hash)


def _remove_temp_files(out: Path) -> None:
    for tmp in out.glob(".shard-*.tmp"):
        tmp.unlink(missing_ok=True)


# --- Manifest -----------------------------------------------------------------------------------


def _start_manifest(out: Path, shards: list[ShardSpec], config: JobConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """Write (or check against) the manifest: a folder belongs to one key set, shard size and job meta."""
    plan = {
        "key_hash": hash_keys([k for s in shards for k in s.keys]),
        "n_keys": sum(len(s.keys) for s in shards),
        "shard_size": config.shard_size,
        "key_column": config.key_column,
        "meta": json.loads(json.dumps(meta, sort_keys=True, default=str)),
    }
    path = out / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        for field in plan:
            if old.get(field) != plan[field]:
                raise JobError(
                    f"{path}: this folder holds a job with a different {field} "
                    f"({old.get(field)!r} != {plan[field]!r}); use a new output folder or delete this one"
                )
    manifest = {
        **plan,
        "job_config": config.model_dump(mode="json"),
        "complete": False,
        "shards": [{"shard_id": s.shard_id, "key_hash": s.key_hash, "n_keys": len(s.keys), "n_rows": None} for s in shards],
    }
    _write_json(path, manifest)
    return manifest


def _finish_manifest(out: Path, manifest: dict[str, Any], shards: list[ShardSpec]) -> int:
    total, complete = 0, True
    for entry, spec in zip(manifest["shards"], shards):
        info = _shard_info(out / spec.file_name)
        ok = info is not None and info["key_hash"] == spec.key_hash
        entry["n_rows"] = info["n_rows"] if ok else None
        total += info["n_rows"] if ok else 0
        complete &= ok
    manifest.update(complete=complete, n_rows=total)
    _write_json(out / MANIFEST, manifest)
    if not complete:
        raise JobError(f"{out}: some shards did not finish; rerun to resume")
    return total


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


# --- Executors ----------------------------------------------------------------------------------


class _Constant:
    """A picklable factory that returns an already-built process function."""

    def __init__(self, process: Process):
        self.process = process

    def __call__(self) -> Process:
        return self.process


def _progress(config: JobConfig, total: int, done: int):
    """Keys done over all keys; drawn only when `config.progress` and `llmrec.progress.bars_enabled()`."""
    if not config.progress:
        return None
    return progress_bar(desc="shards", total=total, unit="user", initial=done)


def _tick(bar, n_keys: int, t0: float, n_done: int) -> None:
    if bar is None:
        return
    bar.update(n_keys)
    elapsed = time.perf_counter() - t0
    bar.set_postfix_str(f"{60.0 * n_done / elapsed:.1f} users/min" if elapsed > 0 else "")


def _run_local(todo: list[ShardSpec], factory: Callable[[], Process], out: Path, config: JobConfig, bar) -> None:
    if not todo:
        return
    process = factory()  # built once per run (one engine per process), never per shard
    t0, n_done = time.perf_counter(), 0
    for spec in todo:
        write_shard(out, spec, process(list(spec.keys)), config.key_column)
        n_done += len(spec.keys)
        _tick(bar, len(spec.keys), t0, n_done)


class _ShardActor:
    """Ray Data actor: builds the process function (engine) once, then processes and writes shards."""

    def __init__(self, factory: Callable[[], Process], out_dir: str, key_column: str):
        self.process = factory()
        self.out = Path(out_dir)
        self.key_column = key_column

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        ids, rows = [], []
        for shard_id, keys in zip(batch["shard_id"], batch["keys"]):
            spec = ShardSpec(int(shard_id), tuple(str(k) for k in keys))
            rows.append(write_shard(self.out, spec, self.process(list(spec.keys)), self.key_column))
            ids.append(int(shard_id))
        return {"shard_id": ids, "n_rows": rows}


def _run_ray(todo: list[ShardSpec], factory: Callable[[], Process], out: Path, config: JobConfig, bar) -> None:
    if not todo:
        return
    import ray

    started = not ray.is_initialized()
    if started:
        # Local start: workers see the driver's import path, so factories defined in scripts or tests
        # unpickle there too. On a cluster the caller runs ray.init (with its own runtime_env) first.
        path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        ray.init(num_cpus=config.ray_num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        by_id = {s.shard_id: s for s in todo}
        ds = ray.data.from_items([{"shard_id": s.shard_id, "keys": list(s.keys)} for s in todo])
        done = ds.map_batches(
            _ShardActor,
            fn_constructor_kwargs={"factory": factory, "out_dir": str(out.resolve()), "key_column": config.key_column},
            batch_size=1, batch_format="numpy", concurrency=config.ray_concurrency, num_cpus=1,
        )
        t0, n_done = time.perf_counter(), 0
        for row in done.iter_rows():
            n = len(by_id[int(row["shard_id"])].keys)
            n_done += n
            _tick(bar, n, t0, n_done)
    finally:
        if started:
            ray.shutdown()
