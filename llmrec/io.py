"""Artifact I/O: all-or-nothing folder writes (a killed or failed writer never leaves a half-written artifact
folder) and the package versions every manifest records."""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(out: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to write into; on success it replaces `out`, on error it is removed.

    `mode` sets the temporary folder's permissions (mkdtemp makes it private to the current user).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if mode is not None:
            tmp.chmod(mode)
        yield tmp
        if out.exists():  # an earlier, incomplete or outdated folder
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def package_version(name: str = "llmrec", missing: str = "unknown") -> str:
    """The installed version of distribution `name` for a manifest, or `missing` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return missing
