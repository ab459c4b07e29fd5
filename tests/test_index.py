import faiss
import numpy as np
import pytest
from pydantic import ValidationError

from llmrec.config import IndexConfig
from retrieval.index import BruteForceIndex, build_index, load_index, recall_at_k, save_index, search


def _clustered(n: int, d: int = 16, centers: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_faiss_matches_numpy_brute_force():
    x, q = _clustered(2000), _clustered(50, seed=1)
    s_ref, ids_ref = search(BruteForceIndex(x), q, 10)
    s, ids = search(build_index(x, IndexConfig()), q, 10)
    assert np.array_equal(ids, ids_ref)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [IndexConfig(kind="ivf", nlist=32, nprobe=8, train_size=1500),
                                    IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=100, ef_search=128)])
def test_approximate_indices_have_high_recall(config):
    x, q = _clustered(3000), _clustered(100, seed=1)
    _, exact = search(BruteForceIndex(x), q, 10)
    _, approx = search(build_index(x, config), q, 10)
    assert recall_at_k(approx, exact) >= 0.9


def test_search_knobs_are_applied():
    x, q = _clustered(3000), _clustered(100, seed=1)
    _, exact = search(BruteForceIndex(x), q, 10)
    ivf = build_index(x, IndexConfig(kind="ivf", nlist=64, nprobe=1, train_size=3000, seed=3))
    assert ivf.nlist == 64 and ivf.nprobe == 1
    low = recall_at_k(search(ivf, q, 10)[1], exact)
    ivf.nprobe = 64  # all cells: exact
    assert recall_at_k(search(ivf, q, 10)[1], exact) == pytest.approx(1.0)
    assert low < 1.0
    hnsw = build_index(x, IndexConfig(kind="hnsw", hnsw_m=8, ef_construction=20, ef_search=24))
    assert hnsw.hnsw.efSearch == 24 and hnsw.hnsw.efConstruction == 20
    assert faiss.downcast_index(hnsw).hnsw.nb_neighbors(1) == 8


def test_save_load_round_trip(tmp_path):
    x, q = _clustered(1000), _clustered(20, seed=1)
    config = IndexConfig(kind="ivf", nlist=16, nprobe=4)
    index = build_index(x, config)
    save_index(index, tmp_path / "idx", config, manifest={"split_hash": "abc"})
    loaded, cfg = load_index(tmp_path / "idx")
    assert cfg == config and loaded.nprobe == 4
    assert np.array_equal(search(loaded, q, 5)[1], search(index, q, 5)[1])
    with pytest.raises(FileNotFoundError, match="missing"):
        load_index(tmp_path / "nowhere")


def test_recall_and_config_validation():
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 4, 5]])) == pytest.approx(1 / 3)
    with pytest.raises(ValidationError, match="nprobe"):
        IndexConfig(kind="ivf", nlist=4, nprobe=8)
    with pytest.raises(ValueError, match="nlist"):
        build_index(_clustered(10), IndexConfig(kind="ivf", nlist=32, nprobe=1))
