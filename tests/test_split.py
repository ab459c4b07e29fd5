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
