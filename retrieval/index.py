"""FAISS indices over item vectors (maximum inner product), with a NumPy brute-force reference.

Exact search (`IndexFlatIP`) is the default: for catalogues up to ~100k items it is fast enough and has no
recall loss. IVF (`IndexIVFFlat`: k-means cells, `nprobe` visited per query) and HNSW (`IndexHNSWFlat`:
graph search, `ef_search` beam) trade recall for speed on large catalogues; `recall_at_k` measures that
trade against the exact index. Indices are saved with `faiss.write_index` plus the config.json that built
them, never pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from llmrec.config import IndexConfig

INDEX_FILE = "index.faiss"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"


class BruteForceIndex:
    """The reference: exact top-k by inner product with NumPy (ties -> lower id first)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = _as_matrix(vectors)  # [N, d]

    @property
    def ntotal(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """([Q, k] scores, [Q, k] ids), best first."""
        q = _as_matrix(queries)
        scores = q @ self.vectors.T  # [Q, N]
        k = min(k, self.ntotal)
        ids = np.empty((q.shape[0], k), dtype=np.int64)
        for i, row in enumerate(scores):
            part = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
            ids[i] = part[np.lexsort((part, -row[part]))]
        return np.take_along_axis(scores, ids, axis=1), ids


def build_index(vectors: np.ndarray, config: IndexConfig | None = None) -> faiss.Index:
    """An inner-product index holding `vectors` [N, d] float32 (row i -> id i)."""
    config = config or IndexConfig()
    x = _as_matrix(vectors)
    n, d = x.shape
    if config.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif config.kind == "ivf":
        if config.nlist > n:
            raise ValueError(f"IndexConfig.nlist ({config.nlist}) exceeds the number of vectors ({n})")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, config.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = config.seed
        rng = np.random.default_rng(config.seed)
        sample = x if n <= config.train_size else x[np.sort(rng.choice(n, config.train_size, replace=False))]
        index.train(sample)
        index.nprobe = config.nprobe
    else:  # hnsw
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
    index.add(x)
    return index


def configure_search(index: faiss.Index, config: IndexConfig) -> faiss.Index:
    """Apply the search-time knobs (nprobe, ef_search) of `config` to a built or loaded index."""
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = config.nprobe
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = config.ef_search
    return index


def search(index: faiss.Index | BruteForceIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """([Q, k] scores, [Q, k] ids) of the k best items per query; ids are -1 where fewer were found."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return index.search(_as_matrix(queries), k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean share of the exact top-k ids [Q, k] that the approximate search [Q, k'] also returned."""
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(f"{approx_ids.shape[0]} approximate rows vs {exact_ids.shape[0]} exact rows")
    hits = [np.isin(e[e >= 0], a[a >= 0]).sum() / max((e >= 0).sum(), 1) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) if hits else 0.0


def save_index(index: faiss.Index, directory: str | Path, config: IndexConfig,
               manifest: dict | None = None) -> Path:
    """Write index.faiss + config.json (+ manifest.json: split hash, package version, ...) to `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out / INDEX_FILE))
    config.to_json(out / CONFIG_FILE)
    meta = {"ntotal": int(index.ntotal), "dim": int(index.d), "faiss_version": faiss.__version__, **(manifest or {})}
    (out / MANIFEST_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_index(directory: str | Path) -> tuple[faiss.Index, IndexConfig]:
    """Reverse `save_index`: the index with its search knobs re-applied, and its config."""
    root = Path(directory)
    for name in (INDEX_FILE, CONFIG_FILE):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root}: not an index folder, missing {name} (write one with save_index)")
    config = IndexConfig.from_json(root / CONFIG_FILE)
    index = faiss.read_index(str(root / INDEX_FILE))
    if (root / MANIFEST_FILE).is_file():
        ntotal = json.loads((root / MANIFEST_FILE).read_text()).get("ntotal")
        if ntotal is not None and ntotal != index.ntotal:
            raise ValueError(f"{root}: manifest says {ntotal} vectors, index holds {index.ntotal}; damaged copy?")
    return configure_search(index, config), config


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a [N, d] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or inf")
    return x
