"""The product path on the 20-user fixture: build (fake LLM) -> save -> load -> recommend."""

from __future__ import annotations

import threading

import pytest

from llmrec.build import build_recommender
from llmrec.config import RecommenderConfig, TowerConfig
from llmrec.llm import FakeBackend
from llmrec.pipeline import Recommender, RecommendError, UnknownItemError, UnknownUserError, profile_segment
from llmrec.schema import Recommendation

TINY_TOWERS = TowerConfig(encoder="hashed-bow", dim=16, hidden=32, epochs=2, patience=1, max_len=20,
                          uniform_negatives=32, beta_grid=(0.5, 1.0))


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    config = RecommenderConfig(towers=TINY_TOWERS)
    build_recommender(tiny, out, config, backend=FakeBackend(), mine_users=12, explain_users=3, k=5)
    return out


def test_load_reverses_save(built):
    rec = Recommender.load(built)
    again = Recommender.load(built)
    a = rec.recommend(user_id="1", k=5)
    b = again.recommend(user_id="1", k=5)
    assert [r.item.item_id for r in a] == [r.item.item_id for r in b]
    assert all(isinstance(r, Recommendation) for r in a) and len(a) == 5


def test_warm_user_gets_unseen_items_with_interest_and_explanation(built, tiny):
    rec = Recommender.load(built)
    seen = set(tiny.events[tiny.events["user_id"] == "3"]["item_id"])
    recs = rec.recommend(user_id="3", k=10)
    assert len(recs) == 10 and not seen & {r.item.item_id for r in recs}
    assert all(r.explanation and r.interest for r in recs)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)


def test_new_user_paths(built, tiny):
    rec = Recommender.load(built)
    items = list(tiny.events["item_id"].iloc[:3])
    recs = rec.recommend(history=items, profile={"age": "30", "gender": "M", "occupation": "engineer"}, k=5)
    assert len(recs) == 5 and not set(items) & {r.item.item_id for r in recs}
    empty = rec.recommend(history=[], k=4)
    assert [r.source for r in empty] == ["popularity"] * 4


def test_bad_requests_raise_typed_errors(built):
    rec = Recommender.load(built)
    with pytest.raises(UnknownUserError, match="unknown user_id"):
        rec.recommend(user_id="no-such-user")
    with pytest.raises(UnknownItemError, match="not in the catalogue"):
        rec.recommend(history=["1", "999999"])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(RecommendError, match="k must be a positive integer"):
            rec.recommend(user_id="1", k=bad)
    with pytest.raises(RecommendError, match="either user_id"):
        rec.recommend("1", history=["1"])


def test_concurrent_calls_match_serial_results(built):
    rec = Recommender.load(built)
    users = [str(u) for u in range(1, 21)]
    serial = {u: [r.item.item_id for r in rec.recommend(user_id=u, k=5)] for u in users}
    got, errors = {}, []

    def worker(us):
        try:
            for u in us:
                got[u] = [r.item.item_id for r in rec.recommend(user_id=u, k=5)]
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(users[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == serial


def test_profile_segment_is_stable():
    assert profile_segment({"age": "27", "gender": "f", "occupation": "Writer"}) == "writer|F|20s"
    assert profile_segment({}) == "?|?|?"


def test_mine_users_limits_llm_mining_and_counts_the_rest(built):
    rec = Recommender.load(built)
    sources = [p.source for p in rec.profiles.values()]
    assert len(sources) == 20
    assert sources.count("heuristic") == 8  # users 13..20 by id order were not mined
    assert all(p.tags for p in rec.profiles.values() if p.source == "heuristic")
    assert rec.manifest["mining"]["users"] == 12
    explain = rec.manifest["explain"]  # summed over the explanation job's shards
    assert explain["n_pairs"] == len(rec.explanations) and explain["llm_final"] + explain["templated"] == explain["n_pairs"]


def test_build_mines_with_the_adapter_merged_then_frees_that_engine(tiny, tmp_path, monkeypatch):
    """With an adapter and no explicit backend, mining runs on a merged-model engine (no LoRA requests), which
    is closed before the base engine (explanations, imagined histories) starts."""
    import llmrec.build as B
    from llmrec.config import LLMConfig

    events: list[tuple[str, object]] = []

    class Engine(FakeBackend):
        def __init__(self, llm: LLMConfig):
            super().__init__()
            self.model, self.enable_lora = llm.model, llm.enable_lora
            events.append(("start", self))

        def close(self) -> None:
            events.append(("close", self))

    monkeypatch.setattr(B, "make_backend", Engine)
    monkeypatch.setattr(B, "merged_model", lambda model, adapter: tmp_path / f"merged-{adapter}")
    config = RecommenderConfig(towers=TINY_TOWERS, llm=LLMConfig(enable_lora=False))
    build_recommender(tiny, tmp_path / "rec", config, adapter="lora", mine_users=4, explain_users=2, k=3)
    (_, miner), (_, first_closed), (_, base), (_, last_closed) = events
    assert [e for e, _ in events] == ["start", "close", "start", "close"]
    assert first_closed is miner and last_closed is base
    assert miner.model == str(tmp_path / "merged-lora") and not miner.enable_lora
    assert miner.calls and all(c["adapter"] is None for c in miner.calls)
    assert base.model is None and base.calls and all(c["adapter"] is None for c in base.calls)
    profiles = Recommender.load(tmp_path / "rec").profiles.values()
    assert {p.model for p in profiles if p.source != "heuristic"} == {"vllm+lora"}  # the 4 mined users


def test_folder_holds_the_attribute_vocabulary_and_load_reads_it(built):
    from llmrec.vocab import load_vocabulary, vocabulary_of

    assert (built / "vocab.json").is_file()
    rec = Recommender.load(built)
    assert rec.attrs == load_vocabulary(built) == vocabulary_of(rec.dataset)
