import pandas as pd
import pytest

from llmrec.data.split import events_before, split_leave_one_out, truncate_history


def test_leave_one_out_targets_are_each_users_last_events(real_ml100k):
    ml100k = real_ml100k
    split = split_leave_one_out(ml100k.events)
    assert split.report["users_with_targets"] == 943
    assert len(split.test) == len(split.valid) == 943
    assert len(split.train) + 2 * 943 == len(ml100k.events)
    last = ml100k.events.groupby("user_id").tail(1).set_index("user_id")
    test = split.test.set_index("user_id")
    assert (test.loc[last.index, "item_id"] == last["item_id"]).all()


def test_no_event_after_the_target_is_visible(ml100k):
    split = split_leave_one_out(ml100k.events)
    for stage in ("valid", "test"):
        hist = split.history(stage)
        as_of = hist["user_id"].map(split.as_of(stage))
        assert (hist["timestamp"] <= as_of).all()
        # The target itself is never in the visible history.
        targets = split.targets(stage)
        merged = hist.merge(targets, on=["user_id", "item_id", "timestamp"], how="inner")
        assert merged.empty
    assert len(split.history("test")) == len(split.train) + len(split.valid)


def test_short_users_keep_their_events_in_train_and_are_counted():
    ts = pd.to_datetime([1, 2, 3, 1, 2], unit="s", utc=True)
    ev = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b"], "item_id": ["1", "2", "3", "1", "2"],
                       "timestamp": ts, "behavior": "liked", "value": None})
    split = split_leave_one_out(ev, min_events=3)
    assert split.report["users_too_short"] == 1
    assert list(split.test["user_id"]) == ["a"] and list(split.test["item_id"]) == ["3"]
    assert sorted(split.train["user_id"]) == ["a", "b", "b"]


def test_split_hash_is_stable_and_sensitive(tiny):
    a = split_leave_one_out(tiny.events)
    assert a.hash == split_leave_one_out(tiny.events).hash
    changed = tiny.events.copy()
    changed.loc[0, "item_id"] = "999"
    assert split_leave_one_out(changed).hash != a.hash


def test_cold_view_keeps_last_n_and_rejects_negative(tiny):
    cold = truncate_history(tiny.events, 3)
    assert cold.groupby("user_id").size().max() == 3
    assert truncate_history(tiny.events, 0).empty
    with pytest.raises(ValueError, match="n_last"):
        truncate_history(tiny.events, -1)


def test_events_before_per_user_cutoff(tiny):
    split = split_leave_one_out(tiny.events)
    before = events_before(tiny.events, split.as_of("test"))
    assert (before["timestamp"] < before["user_id"].map(split.as_of("test"))).all()


def test_holdout_off_keeps_the_plain_split_and_its_hash(real_ml100k):
    plain = split_leave_one_out(real_ml100k.events)
    assert plain.hash == "2717acfe23f1ae52"  # the ML-100K split every artifact manifest already carries
    assert plain.holdout is None and plain.holdout_users == frozenset() and "holdout_users" not in plain.report
    assert split_leave_one_out(real_ml100k.events, holdout_share=0.0, holdout_seed=9).hash == plain.hash


def test_holdout_takes_whole_users_out_seeded_and_changes_the_hash(tiny):
    from llmrec.data.split import holdout_user_ids
    from llmrec.errors import DataError

    split = split_leave_one_out(tiny.events, holdout_share=0.25, holdout_seed=1)
    held = split.holdout_users
    assert len(held) == 5 and split.report["holdout_users"] == 5 and split.report["holdout_seed"] == 1
    for frame in (split.train, split.valid, split.test):
        assert not set(frame["user_id"].astype(str)) & held
    # Every event of a held-out user is in the holdout, and nothing else is.
    assert len(split.holdout) == tiny.events["user_id"].astype(str).isin(held).sum()
    assert len(split.holdout) + len(split.train) + len(split.valid) + len(split.test) == len(tiny.events)
    assert split_leave_one_out(tiny.events.sample(frac=1, random_state=0), holdout_share=0.25,
                               holdout_seed=1).holdout_users == held  # input order does not matter
    assert split_leave_one_out(tiny.events, holdout_share=0.25, holdout_seed=2).holdout_users != held
    assert split.hash != split_leave_one_out(tiny.events).hash
    assert split.hash != split_leave_one_out(tiny.events, holdout_share=0.25, holdout_seed=2).hash
    with pytest.raises(DataError, match="share"):
        holdout_user_ids(["a"], 1.0, 0)
