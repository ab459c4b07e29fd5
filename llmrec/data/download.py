"""Fetch the official MovieLens-100K zip, verify its checksum, and unpack it atomically.

The default destination is the folder `llmrec.data.ml100k_dir()` reads when $LLMREC_ML100K_DIR is unset,
so after `llmrec data download ml-100k` every `--dataset ml-100k` command works. The archive is streamed
to a temporary file next to the destination, checked against its MD5, unpacked into a temporary folder and
renamed into place: an interrupted or corrupt download never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from llmrec.data.datasets import DataError, llmrec_home

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
ML100K_FILES = ("u.data", "u.item", "u.user")


def default_ml100k_dest() -> Path:
    return llmrec_home() / "datasets" / "ml-100k"


def fetch(url: str, path: Path, timeout: float = 60.0) -> str:
    """Stream `url` (http(s) or file://) into `path`; returns the MD5 hex digest of what was written."""
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, path.open("wb") as out:
            for block in iter(lambda: resp.read(1 << 20), b""):
                md5.update(block)
                out.write(block)
    except OSError as e:  # URLError, HTTPError and socket errors are OSErrors
        raise DataError(f"cannot download {url}: {e}") from e
    return md5.hexdigest()


def _extract(archive: Path, into: Path) -> Path:
    """Unzip safely (no member may escape `into`); returns the folder holding u.data."""
    try:
        with zipfile.ZipFile(archive) as zf:
            root = into.resolve()
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: member {member!r} would be written outside the dataset folder")
            zf.extractall(into)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a zip archive ({e})") from e
    found = sorted(p.parent for p in into.rglob("u.data"))
    if not found:
        raise DataError(f"{archive}: no u.data inside; not a MovieLens-100K archive")
    missing = [f for f in ML100K_FILES if not (found[0] / f).is_file()]
    if missing:
        raise DataError(f"{archive}: MovieLens-100K archive lacks {missing}")
    return found[0]


def download_ml100k(dest: str | Path | None = None, url: str = GROUPLENS_URL, md5: str = ML100K_MD5,
                    force: bool = False) -> Path:
    """Download, verify and unpack MovieLens-100K into `dest` (default $LLMREC_HOME/datasets/ml-100k).

    An existing complete copy (u.data, u.item, u.user present) is kept unless `force`. Returns `dest`.
    """
    dest = Path(dest).expanduser() if dest is not None else default_ml100k_dest()
    if not force and all((dest / f).is_file() for f in ML100K_FILES):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
    try:
        archive = work / "ml-100k.zip"
        got = fetch(url, archive)
        if got != md5.lower():
            raise DataError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}; "
                            f"the download is corrupt or the file changed upstream (nothing was written)")
        folder = _extract(archive, work / "unpacked")
        if dest.exists():
            old = work / "previous"
            dest.rename(old)  # the old copy goes away with `work`
        folder.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest
