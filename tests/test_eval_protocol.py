import numpy as np
import pytest

from llmrec.config import EvaluateConfig, SASRecConfig, TowerConfig
from llmrec.eval.protocol import build_protocol, ndcg_gains, score_slice, score_view, user_key
from llmrec.eval.run import run_evaluation
from llmrec.metrics import ndcg_at_k

from helpers import RecordingScorer  # tests/helpers.py


def _sequence(events, vocab, user):
    return vocab.encode(events[events["user_id"].astype(str) == user].sort_values("timestamp", kind="stable")["item_id"])


def test_every_slice_shows_what_its_name_says_and_never_the_target(tiny):
    config = EvaluateConfig(cold_lengths=(0, 1, 3, 5), short_lengths=(1, 3), cold_user_share=0.25, cold_user_seed=2)
    proto = build_protocol(tiny, config)
    split, vocab = proto.split, proto.vocab
    held = split.holdout_users
    assert len(held) == 5 and split.report["holdout_seed"] == 2
    assert set(proto.slices) == {"all", "valid", "short_1", "short_3", "cold_user_0", "cold_user_1", "cold_user_3",
                                 "cold_user_5", "long_tail"}
    test = split.targets("test").set_index("user_id")
    valid = split.targets("valid").set_index("user_id")
    full = dict(zip(proto.slices["all"].users, proto.slices["all"].histories))
    for name, view in proto.slices.items():
        rec = RecordingScorer(vocab.size)
        score_slice(rec, view, proto, batch_size=7)
        assert [u for u, _ in rec.seen] == view.users and view.users
        cold = name.startswith("cold_user_")
        assert (set(view.users) <= held) if cold else not (set(view.users) & held)
        for (u, h), target in zip(rec.seen, view.targets):
            assert target not in h  # no leakage of the target
            if cold:  # a held-out user's first N events, target = event N+1
                n = int(name.rsplit("_", 1)[1])
                seq = _sequence(tiny.events, vocab, u)
                assert np.array_equal(h, seq[:n]) and target == seq[n]
            elif name == "valid":  # training history only, the validation target
                assert target == vocab.index[valid.loc[u, "item_id"]]
                assert np.array_equal(h, _sequence(split.train, vocab, u))
            else:
                assert target == vocab.index[test.loc[u, "item_id"]]
                if name.startswith("short_"):
                    n = int(name.split("_")[1])
                    assert np.array_equal(h, full[u][len(full[u]) - n:])  # the LAST n events
                else:
                    assert np.array_equal(h, full[u])
    assert all(vocab.index[test.loc[u, "item_id"]] in proto.long_tail for u in proto.slices["long_tail"].users)
    cold0 = proto.slices["cold_user_0"]
    assert (cold0.as_of == tiny.events.groupby(tiny.events["user_id"].astype(str))["timestamp"].min()
            .loc[cold0.users]).all()


def test_ndcg_gains_average_to_the_metric_and_score_view_keys_them_by_user(tiny):
    ranks = np.array([1, 3, 11, 2])
    assert ndcg_gains(ranks, 10).mean() == pytest.approx(ndcg_at_k(ranks, 10))
    proto = build_protocol(tiny, EvaluateConfig(cold_user_share=0.0))
    assert not [s for s in proto.slices if s.startswith("cold_user_")]  # holdout off: no cold-user slice
    got = score_view(RecordingScorer(proto.vocab.size), proto.slices["all"], proto)
    assert list(got.ndcg_by_user) == [user_key(u) for u in proto.slices["all"].users]  # ids not republished
    assert np.mean(list(got.ndcg_by_user.values())) == pytest.approx(got.metrics["ndcg@10"])


def test_no_trained_row_sees_a_held_out_user(tiny, monkeypatch):
    """Spy on every trainer the run calls: none of the frames it can read holds a held-out user's event."""
    import retrieval.baselines as baselines
    import retrieval.sasrec as sasrec
    import retrieval.train as train

    seen: list[tuple[str, set]] = []

    def users_of(frame):
        return set(frame["user_id"].astype(str))

    def spy(name, real, frames):
        def wrapped(*args, **kwargs):
            seen.extend((name, users_of(f)) for f in frames(*args))
            return real(*args, **kwargs)
        return wrapped

    split_frames = lambda s: (s.train, s.valid, s.test)
    monkeypatch.setattr(train, "train_towers", spy("towers", train.train_towers,
                                                   lambda d, s, *a: (d.events, *split_frames(s))))
    monkeypatch.setattr(sasrec, "train_sasrec", spy("sasrec", sasrec.train_sasrec, lambda s, *a: split_frames(s)))
    for cls in (baselines.PopularityScorer, baselines.ItemKNNScorer):
        monkeypatch.setattr(cls, "fit", staticmethod(spy(cls.__name__, cls.fit, lambda ev, *a: (ev,))))
    config = EvaluateConfig(dataset="tiny", models=("popularity", "item_knn", "sasrec_ce", "three_tower_notag",
                                                    "three_tower_no_logq"),
                            seeds=(0,), cold_lengths=(0, 1), short_lengths=(1,), cold_user_share=0.25, use_llm=False,
                            sasrec=SASRecConfig(maxlen=10, epochs=1, hidden=8),
                            towers=TowerConfig(encoder="hashed-bow", epochs=1, max_len=10, beta_grid=(1.0,)))
    run = run_evaluation(tiny, config)
    held = build_protocol(tiny, config).split.holdout_users
    assert run.settings["split_report"]["holdout_users"] == len(held)
    assert len(held) == 5
    assert {name for name, _ in seen} == {"towers", "sasrec", "PopularityScorer", "ItemKNNScorer"}
    assert all(not (users & held) for _, users in seen)
    # ... and yet the held-out users are scored, as true cold-start users.
    cold = {r["slice"]: r["n"] for r in run.records if r["slice"].startswith("cold_user_") and r["metric"] == "mrr"}
    assert cold == {"cold_user_0": 5, "cold_user_1": 5}
