"""The HTTP service: a real uvicorn server on 127.0.0.1 (free port), a real httpx client, a recommender folder
built by the fake-backend build path on the 20-user fixture."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from llmrec.build import build_recommender
from llmrec.config import RecommenderConfig, TowerConfig
from llmrec.llm import FakeBackend
from llmrec.pipeline import Recommender
from llmrec.schema import Recommendation

TINY_TOWERS = TowerConfig(encoder="hashed-bow", dim=16, hidden=32, epochs=2, patience=1, max_len=20,
                          uniform_negatives=32, beta_grid=(0.5, 1.0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec")
    build_recommender(tiny, out, RecommenderConfig(towers=TINY_TOWERS), backend=FakeBackend(), mine_users=12,
                      explain_users=3, k=5)
    return out


@pytest.fixture(scope="module")
def rec(built: Path) -> Recommender:
    return Recommender.load(built)


@pytest.fixture(scope="module")
def base_url(rec: Recommender):
    """A uvicorn server in a thread of this process, stopped at the end of the module."""
    import uvicorn

    from llmrec.serve import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(rec), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_health_and_openapi(base_url: str, rec: Recommender):
    health = httpx.get(f"{base_url}/health").json()
    assert health["status"] == "ok" and health["users"] == len(rec._sequences) == 20
    assert health["items"] == len(rec.vocab.ids)
    spec = httpx.get(f"{base_url}/openapi.json").json()
    assert {"/health", "/users/{user_id}/recommendations", "/recommendations"} <= set(spec["paths"])
    assert "Recommendation" in spec["components"]["schemas"]
    assert httpx.get(f"{base_url}/docs").status_code == 200


def test_known_user_over_http_equals_the_library(base_url: str, rec: Recommender):
    res = httpx.get(f"{base_url}/users/3/recommendations", params={"k": 5})
    assert res.status_code == 200
    got = [Recommendation.model_validate(r) for r in res.json()]
    assert got == rec.recommend("3", k=5)
    posted = httpx.post(f"{base_url}/recommendations", json={"user_id": "3", "k": 5}).json()
    assert [Recommendation.model_validate(r) for r in posted] == got


def test_new_user_by_history_and_profile(base_url: str, rec: Recommender, tiny):
    items = [str(i) for i in tiny.events["item_id"].iloc[:3]]
    profile = {"age": "30", "gender": "M", "occupation": "engineer"}
    res = httpx.post(f"{base_url}/recommendations", json={"history": items, "profile": profile, "k": 4})
    assert res.status_code == 200
    got = [Recommendation.model_validate(r) for r in res.json()]
    assert got == rec.recommend(history=items, profile=profile, k=4) and len(got) == 4
    assert not set(items) & {r.item.item_id for r in got}


def test_typed_errors_map_to_status_codes(base_url: str):
    unknown_user = httpx.get(f"{base_url}/users/no-such-user/recommendations")
    assert unknown_user.status_code == 404
    assert unknown_user.json()["error"] == "UnknownUserError"
    assert unknown_user.json()["detail"].startswith("unknown user_id 'no-such-user'")
    unknown_item = httpx.post(f"{base_url}/recommendations", json={"history": ["1", "999999"]})
    assert unknown_item.status_code == 404 and unknown_item.json()["error"] == "UnknownItemError"
    both = httpx.post(f"{base_url}/recommendations", json={"user_id": "3", "history": ["1"]})
    assert both.status_code == 422 and both.json() == {
        "error": "RecommendError", "detail": "pass either user_id (a known user) or history (a new user), not both"}
    for bad in ({"history": ["1"], "k": 0}, {"history": ["1"], "surprise": 1}, {"history": "1,2"}):
        res = httpx.post(f"{base_url}/recommendations", json=bad)
        assert res.status_code == 422 and res.json()["detail"], bad
    assert httpx.get(f"{base_url}/users/3/recommendations", params={"k": "many"}).status_code == 422


def test_concurrent_clients_get_the_single_client_answers(base_url: str, rec: Recommender):
    from concurrent.futures import ThreadPoolExecutor

    users = sorted(rec._sequences)[:8]
    want = {u: [r.item.item_id for r in rec.recommend(u, k=5)] for u in users}
    with httpx.Client(base_url=base_url) as client, ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda u: client.get(f"/users/{u}/recommendations", params={"k": 5}).json(),
                            users * 3))
    assert [[r["item"]["item_id"] for r in g] for g in got] == [want[u] for u in users * 3]


def test_request_threads_and_tag_vectors_ready_at_load(rec: Recommender):
    import torch

    from llmrec.errors import RecommendError
    from llmrec.pipeline import set_request_threads

    before = torch.get_num_threads()
    try:
        set_request_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(RecommendError, match="threads must be >= 1"):
            set_request_threads(0)
    finally:
        torch.set_num_threads(before)
    mined = {t.text for p in rec.profiles.values() for t in p.tags} | {
        i.name for p in rec.profiles.values() for i in p.interests}
    assert mined and mined <= set(rec._tag_vecs)  # no request has to encode them under the lock
    fresh = rec.towers.encode_tags(sorted(mined))
    assert abs(fresh - np.stack([rec._tag_vecs[t] for t in sorted(mined)])).max() < 1e-6


def test_cli_serve_command(built: Path, tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.getcwd()) if p)}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "llmrec", "serve", "--artifacts", str(built), "--port", str(port),
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "serve.log").read_text()) from None
                time.sleep(0.5)
        assert health.status_code == 200 and health.json()["users"] == 20
        assert len(httpx.get(f"http://127.0.0.1:{port}/users/1/recommendations", params={"k": 3}).json()) == 3
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    bad = subprocess.run([sys.executable, "-m", "llmrec", "serve", "--artifacts", str(tmp_path / "none")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and "not a recommender" in bad.stderr
