"""Fetch a public dataset, verify its checksum, and unpack it atomically.

Each known dataset (`ARCHIVES`) names its files, URLs and, where a published or widely pinned value exists,
their MD5. The default destination is `$LLMREC_HOME/datasets/<name>`, the folder `resolve_dataset(name)`
reads when no environment variable points elsewhere, so after `llmrec data download NAME` every
`--dataset NAME` command works. Files are streamed into a temporary folder next to the destination,
checked, unpacked and renamed into place: an interrupted or corrupt download never leaves a half-written
dataset behind. A dataset without a pinned checksum is refused unless the caller passes one: the error
gives the MD5 it computed so a person can verify it and pass it with `--md5`.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llmrec.data.datasets import DataError, llmrec_home

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
AMAZON_2018 = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"


@dataclass(frozen=True)
class Source:
    """One downloadable file: a zip to unpack (`unzip`) or a file kept as is, and its MD5 if pinned."""

    url: str
    md5: str | None
    unzip: bool = True


@dataclass(frozen=True)
class Archive:
    """A dataset's sources and the files its unpacked folder must hold."""

    sources: tuple[Source, ...]
    files: tuple[str, ...]


# MD5s of the GroupLens zips as pinned by public loaders (e.g. papers_with_code's movielens config, datarec's
# MovieLens1M); ml-latest-small is re-released in place, so no value is pinned for it.
ARCHIVES = {
    "ml-100k": Archive((Source(f"{GROUPLENS}/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),),
                       ("u.data", "u.item", "u.user")),
    "ml-1m": Archive((Source(f"{GROUPLENS}/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),),
                     ("ratings.dat", "movies.dat", "users.dat")),
    "ml-20m": Archive((Source(f"{GROUPLENS}/ml-20m.zip", "cd245b17a1ae2cc31bb14903e1204af3"),),
                      ("ratings.csv", "movies.csv")),
    "ml-25m": Archive((Source(f"{GROUPLENS}/ml-25m.zip", "6b51fb2759a8657d3bfcbfc42b592ada"),),
                      ("ratings.csv", "movies.csv")),
    "ml-latest-small": Archive((Source(f"{GROUPLENS}/ml-latest-small.zip", None),), ("ratings.csv", "movies.csv")),
}
GROUPLENS_URL = ARCHIVES["ml-100k"].sources[0].url
ML100K_MD5 = ARCHIVES["ml-100k"].sources[0].md5
ML100K_FILES = ARCHIVES["ml-100k"].files


def amazon_archive(name: str) -> Archive:
    """`amazon-2018-magazine-subscriptions` -> the 5-core reviews and metadata of Magazine_Subscriptions.
    The upstream files were re-released with other bytes, so no checksum is pinned."""
    slug = name.removeprefix("amazon-2018-")
    spelled = {"and": "and", "tv": "TV", "cds": "CDs"}  # Amazon's own spelling: Movies_and_TV, CDs_and_Vinyl
    category = "_".join(spelled.get(w, w.capitalize()) for w in slug.split("-"))
    reviews, meta = f"{category}_5.json.gz", f"meta_{category}.json.gz"
    return Archive((Source(f"{AMAZON_2018}/categoryFilesSmall/{reviews}", None, unzip=False),
                    Source(f"{AMAZON_2018}/metaFiles2/{meta}", None, unzip=False)), (reviews, meta))


def archive_for(name: str) -> Archive:
    if name in ARCHIVES:
        return ARCHIVES[name]
    if name.startswith("amazon-2018-") and len(name) > len("amazon-2018-"):
        return amazon_archive(name)
    raise DataError(f"unknown dataset {name!r}: can download {sorted(ARCHIVES)} or amazon-2018-<category>")


def default_dest(name: str) -> Path:
    return llmrec_home() / "datasets" / name


def default_ml100k_dest() -> Path:
    return default_dest("ml-100k")


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


def _extract(archive: Path, into: Path, files: tuple[str, ...]) -> Path:
    """Unzip safely (no member may escape `into`); returns the folder holding `files[0]`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            root = into.resolve()
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: member {member!r} would be written outside the dataset folder")
            zf.extractall(into)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a zip archive ({e})") from e
    found = sorted(p.parent for p in into.rglob(files[0]))
    if not found:
        raise DataError(f"{archive}: no {files[0]} inside; not the expected archive")
    missing = [f for f in files if not (found[0] / f).is_file()]
    if missing:
        raise DataError(f"{archive}: archive lacks {missing}")
    return found[0]


def _check(url: str, got: str, want: str | None, name: str, n_sources: int) -> None:
    if want is None:
        flag = "--md5 " + ("<md5>,<md5> (one per file, in order)" if n_sources > 1 else got)
        raise DataError(f"{name}: no checksum is pinned for {url}; its md5 is {got}. Verify it and pass {flag} "
                        f"to accept it (nothing was written)")
    if got != want.lower():
        raise DataError(f"checksum mismatch for {url}: expected md5 {want}, got {got}; "
                        f"the download is corrupt or the file changed upstream (nothing was written)")


def download_dataset(name: str, dest: str | Path | None = None, urls: tuple[str, ...] | None = None,
                     md5s: tuple[str | None, ...] | None = None, force: bool = False) -> Path:
    """Download, verify and unpack dataset `name` into `dest` (default $LLMREC_HOME/datasets/<name>).

    `urls`/`md5s` override the known ones per source (a mirror, a checksum you verified). An existing
    complete copy is kept unless `force`. Returns `dest`.
    """
    archive = archive_for(name)
    n = len(archive.sources)
    urls = tuple(urls) if urls else tuple(s.url for s in archive.sources)
    md5s = tuple(md5s) if md5s else tuple(s.md5 for s in archive.sources)
    if len(urls) != n or len(md5s) != n:
        raise DataError(f"{name}: needs {n} url(s) and md5(s) (one per file: "
                        f"{[s.url.rsplit('/', 1)[-1] for s in archive.sources]}), got {len(urls)} and {len(md5s)}")
    dest = Path(dest).expanduser() if dest is not None else default_dest(name)
    if not force and all((dest / f).is_file() for f in archive.files):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
    try:
        folder = work / "unpacked"
        folder.mkdir()
        for source, url, md5 in zip(archive.sources, urls, md5s):
            path = work / url.rsplit("/", 1)[-1]
            _check(url, fetch(url, path), md5, name, n)
            if source.unzip:
                folder = _extract(path, work / "unzipped", archive.files)
            else:
                path.rename(folder / source.url.rsplit("/", 1)[-1])
        if dest.exists():
            dest.rename(work / "previous")  # the old copy goes away with `work`
        folder.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def download_ml100k(dest: str | Path | None = None, url: str = GROUPLENS_URL, md5: str = ML100K_MD5,
                    force: bool = False) -> Path:
    """Download, verify and unpack MovieLens-100K into `dest` (default $LLMREC_HOME/datasets/ml-100k)."""
    return download_dataset("ml-100k", dest, urls=(url,), md5s=(md5,), force=force)
