"""Multi-behaviour and implicit logs (issue 15): the behaviour vocabulary, value meanings, search events, target
behaviours, and two synthetic logs taken through import -> narrate -> every non-LLM model -> build."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llmrec.cli import app
from llmrec.cli.evaluate import quick_config
from llmrec.config import EVAL_MODELS, EvaluateConfig, NarrativeConfig, SASRecConfig, TowerConfig
from llmrec.data import DataError, load_dataset_dir
from llmrec.data.behaviors import (COMMON_BEHAVIORS, RATING_VOCAB, BehaviorSpec, BehaviorVocab, EventMeaning,
                                   narrative_weights, parse_behavior_types, vocab_for)
from llmrec.data.ingest import import_tables
from llmrec.data.split import split_leave_one_out
from llmrec.eval.rows import LLM_CALLING_ROWS, LLM_TAG_ROWS
from llmrec.narrative import render_narratives
from llmrec.narrative_queries import MAX_QUERIES

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
CATS = ("shoes", "lamps", "books", "tea", "games", "tools")
SHOP_MAP = "user_id=uid,item_id=pid,timestamp=ts,query=q,title=name,genres=cat,brand=maker"
# Every non-LLM row of the evaluation (coldstart_none is only compared with the LLM cold-start rows).
TINY_TOWERS = TowerConfig(encoder="hashed-bow", dim=8, hidden=16, epochs=1, patience=1, max_len=12, layers=1,
                          heads=1, uniform_negatives=16, beta_grid=(0.5, 1.0), tag_batch_size=64)
NON_LLM_ROWS = tuple(m for m in EVAL_MODELS if m not in LLM_TAG_ROWS and m not in LLM_CALLING_ROWS
                     and m != "coldstart_none")


def write_shop_log(root: Path, n_users: int = 24, n_items: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """A shop's log: per session a search, views, a cart and (every other session) a purchase, ISO times."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame({"pid": [f"P{i:03d}" for i in range(n_items)],
                          "name": [f"{CATS[i % len(CATS)].title()} model {i}" for i in range(n_items)],
                          "cat": [CATS[i % len(CATS)] for i in range(n_items)],
                          "maker": [f"maker{i % 5}" for i in range(n_items)]})
    rows = []
    for u in range(n_users):
        cat = u % len(CATS)
        for s in range(5):
            t = T0 + timedelta(days=3 * s + u % 4, hours=u % 7)
            rows.append((f"u{u:02d}", "", t, "search", f"{CATS[cat]} for {['home', 'gift', 'work'][s % 3]}"))
            own = [i for i in range(cat, n_items, len(CATS))]
            viewed = [own[k] if rng.random() < 0.8 else int(rng.integers(n_items)) for k in rng.integers(0, len(own), 3)]
            for j, i in enumerate(viewed):
                rows.append((f"u{u:02d}", f"P{i:03d}", t + timedelta(minutes=1 + j), "view", ""))
            rows.append((f"u{u:02d}", f"P{viewed[-1]:03d}", t + timedelta(minutes=10), "cart", ""))
            if s % 2 == 0:
                rows.append((f"u{u:02d}", f"P{viewed[-1]:03d}", t + timedelta(minutes=20), "purchase", ""))
    events = pd.DataFrame(rows, columns=["uid", "pid", "ts", "action", "q"])
    events["ts"] = events["ts"].map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
    events = events.drop_duplicates(["uid", "pid", "ts", "action"])
    events.to_csv(root / "events.csv", index=False)
    items.to_csv(root / "items.csv", index=False)
    return root / "events.csv", root / "items.csv"


def write_count_log(root: Path, n_users: int = 24, n_items: int = 40, seed: int = 1) -> tuple[Path, Path]:
    """Users tagging artists: the value is how many tags a user gave an artist (mostly 1 or 2)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame({"artist": [f"a{i}" for i in range(n_items)], "name": [f"Band {i}" for i in range(n_items)],
                          "genre": [("rock", "jazz", "folk", "pop")[i % 4] for i in range(n_items)]})
    rows = []
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, size=8 + u % 5, replace=False)):
            rows.append((f"user{u}", f"a{i}", int(T0.timestamp()) + 86_400 * k + u, int(rng.choice([1, 1, 2, 2, 3, 7]))))
    pd.DataFrame(rows, columns=["uid", "artist", "ts", "tags"]).to_csv(root / "events.csv", index=False)
    items.to_csv(root / "items.csv", index=False)
    return root / "events.csv", root / "items.csv"


def cli_import(events: Path, items: Path, out: Path, *args: str):
    return CliRunner().invoke(app, ["data", "import", "--events", str(events), "--items", str(items),
                                    "--out", str(out), *args])


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    events, items = write_shop_log(root / "raw")
    res = cli_import(events, items, root / "ds", "--map", SHOP_MAP, "--behavior-column", "action")
    assert res.exit_code == 0, res.output
    return load_dataset_dir(root / "ds")


@pytest.fixture(scope="module")
def plays(tmp_path_factory):
    root = tmp_path_factory.mktemp("plays")
    events, items = write_count_log(root / "raw")
    res = cli_import(events, items, root / "ds", "--map", "user_id=uid,item_id=artist,timestamp=ts,value=tags,"
                     "title=name,genres=genre", "--behavior", "play", "--value-meaning", "count")
    assert res.exit_code == 0, res.output
    return load_dataset_dir(root / "ds")


# --- Import -----------------------------------------------------------------------------------------


def test_undeclared_numeric_value_exits_2_naming_the_choice(tmp_path):
    events, items = write_count_log(tmp_path / "raw")
    res = cli_import(events, items, tmp_path / "ds", "--map", "user_id=uid,item_id=artist,timestamp=ts,value=tags,"
                     "title=name,genres=genre", "--behavior", "play")
    assert res.exit_code == 2
    assert "column 'tags'" in res.output and "--value-meaning rating" in res.output and "count" in res.output
    assert not (tmp_path / "ds").exists()


def test_count_values_are_strengths_never_dislikes(plays):
    ev = plays.events
    assert set(ev["behavior"]) == {"play"} and (ev["value"] >= 1).all() and (ev["value"] <= 2).mean() > 0.4
    assert plays.behavior_vocab.value_meaning == "count"
    assert plays.behavior_vocab.target_names() == ("play",)


def test_rating_reading_of_the_same_counts_would_dislike_them(tmp_path):
    events, items = write_count_log(tmp_path / "raw")
    mapping = {"user_id": "uid", "item_id": "artist", "timestamp": "ts", "value": "tags", "title": "name",
               "genres": "genre"}
    rated = import_tables(events, items, mapping=mapping, how=EventMeaning(value_meaning="rating"))
    counted = import_tables(events, items, mapping=mapping, how=EventMeaning(value_meaning="count", behavior="play"))
    assert (rated.events["behavior"] == "disliked").mean() > 0.4  # the silent failure of the issue
    assert "disliked" not in set(counted.events["behavior"])
    assert np.array_equal(np.sort(rated.events["value"]), np.sort(counted.events["value"]))
    ignored = import_tables(events, items, mapping=mapping, how=EventMeaning(value_meaning="none", behavior="play"))
    assert ignored.events["value"].isna().all() and len(ignored.events) == len(counted.events)


def test_negative_count_is_a_counted_bad_value(tmp_path):
    (tmp_path / "e.csv").write_text("uid,artist,ts,tags\nu,a1,100,3\nu,a2,200,-1\n")
    (tmp_path / "i.csv").write_text("artist,name\na1,A\na2,B\n")
    ds = import_tables(tmp_path / "e.csv", tmp_path / "i.csv", mapping={"user_id": "uid", "item_id": "artist",
                       "timestamp": "ts", "value": "tags", "title": "name"},
                       how=EventMeaning(value_meaning="count", behavior="play"))
    assert ds.report.skipped == {"bad_value": 1} and list(ds.events["item_id"]) == ["a1"]


def test_unknown_behaviour_is_reported_with_how_to_declare_it(tmp_path):
    (tmp_path / "e.csv").write_text("uid,pid,ts,action\nu,P1,100,view\nu,P1,200,wishlist\nu,P2,300,wishlist\n")
    (tmp_path / "i.csv").write_text("pid,name\nP1,A\nP2,B\n")
    mapping = {"user_id": "uid", "item_id": "pid", "timestamp": "ts", "behavior": "action", "title": "name"}
    with pytest.raises(DataError, match=r"e\.csv: unknown behaviour type\(s\) 'wishlist' \(2 events\); declare it "
                                        r"with --behavior-type NAME=POLARITY\[:WEIGHT\]"):
        import_tables(tmp_path / "e.csv", tmp_path / "i.csv", mapping=mapping)
    how = EventMeaning(declared=parse_behavior_types("wishlist=positive:1.5"))
    ds = import_tables(tmp_path / "e.csv", tmp_path / "i.csv", mapping=mapping, how=how)
    vocab = ds.behavior_vocab
    assert vocab.names == ("view", "wishlist") and vocab.spec("wishlist").weight == 1.5
    assert vocab.target_names() == ("wishlist",)  # positive item types; a view is neutral
    res = cli_import(tmp_path / "e.csv", tmp_path / "i.csv", tmp_path / "ds", "--map",
                     "user_id=uid,item_id=pid,timestamp=ts,title=name", "--behavior-column", "action")
    assert res.exit_code == 2 and "--behavior-type" in res.output
    args = ("--map", "user_id=uid,item_id=pid,timestamp=ts,title=name", "--behavior-column", "action")
    ok = cli_import(tmp_path / "e.csv", tmp_path / "i.csv", tmp_path / "ds", *args, "--behavior-type",
                    "wishlist=positive:1.5")
    assert ok.exit_code == 0, ok.output
    assert load_dataset_dir(tmp_path / "ds").behavior_vocab.spec("wishlist").weight == 1.5
    bad = cli_import(tmp_path / "e.csv", tmp_path / "i.csv", tmp_path / "ds2", *args, "--value-meaning", "stars")
    assert bad.exit_code == 2 and "--value-meaning must be rating, count or none" in bad.output


@pytest.mark.parametrize("spec, message", [
    ("wishlist", "not NAME=POLARITY"), ("wishlist=great", "not NAME=POLARITY"),
    ("wishlist=positive:much", "weight 'much' is not a number"), ("_bad=positive", "must be a word"),
])
def test_bad_behaviour_declarations_name_the_entry(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_behavior_types(spec)


def test_ambiguous_behaviour_sources_are_errors(tmp_path):
    (tmp_path / "e.csv").write_text("uid,pid,ts,action,stars\nu,P1,100,view,4\n")
    (tmp_path / "i.csv").write_text("pid,name\nP1,A\n")
    mapping = {"user_id": "uid", "item_id": "pid", "timestamp": "ts", "title": "name"}
    with pytest.raises(DataError, match="both --behavior 'play' and a behaviour column 'action'"):
        import_tables(tmp_path / "e.csv", tmp_path / "i.csv", mapping={**mapping, "behavior": "action"},
                      how=EventMeaning(behavior="play"))
    with pytest.raises(DataError, match="derived from the rating; drop --behavior 'play'"):
        import_tables(tmp_path / "e.csv", tmp_path / "i.csv", mapping={**mapping, "value": "stars"},
                      how=EventMeaning(behavior="play", value_meaning="rating"))
    # A behaviour column wins over a rating, which is kept as it is (a log exported from a dataset folder).
    ds = import_tables(tmp_path / "e.csv", tmp_path / "i.csv", mapping={**mapping, "behavior": "action",
                       "value": "stars"}, how=EventMeaning(value_meaning="rating"))
    assert list(ds.events["behavior"]) == ["view"] and list(ds.events["value"]) == [4.0]


def test_search_events_become_queries_never_items(shop, tmp_path):
    assert "search" not in set(shop.events["behavior"]) and (shop.events["item_id"] != "").all()
    assert len(shop.queries) == 24 * 5 and set(shop.queries.columns) == {"user_id", "timestamp", "query"}
    assert str(shop.queries["timestamp"].dtype) == "datetime64[s, UTC]"
    assert shop.summary()["queries"] == 120 and shop.behavior_vocab.spec("search").kind == "search"
    # Bad search rows: one naming an item, one without query text.
    (tmp_path / "e.csv").write_text("uid,pid,ts,action,q\nu,,100,search,red shoes\nu,P1,200,search,lamp\n"
                                    "u,,300,search,\nu,P1,400,view,\n")
    (tmp_path / "i.csv").write_text("pid,name\nP1,A\n")
    mapping = {"user_id": "uid", "item_id": "pid", "timestamp": "ts", "behavior": "action", "query": "q",
               "title": "name"}
    ds = import_tables(tmp_path / "e.csv", tmp_path / "i.csv", mapping=mapping)
    assert ds.report.skipped == {"search_with_item": 1, "empty_field": 1}
    assert list(ds.queries["query"]) == ["red shoes"] and list(ds.events["behavior"]) == ["view"]
    with pytest.raises(DataError, match=r"3 search events but no query column; map it with --map query="):
        import_tables(tmp_path / "e.csv", tmp_path / "i.csv", mapping={k: v for k, v in mapping.items() if k != "query"})


def test_vocabulary_round_trips_through_the_folder(shop, tmp_path):
    back = load_dataset_dir(shop.save(tmp_path / "again"))
    assert back.behavior_vocab == shop.behavior_vocab and back.behavior_vocab.value_meaning == "none"
    pd.testing.assert_frame_equal(back.queries, shop.queries)
    meta = json.loads((tmp_path / "again" / "dataset.json").read_text())
    assert {s["name"] for s in meta["behavior_vocab"]["specs"]} == {"cart", "purchase", "search", "view"}
    assert BehaviorVocab.model_validate_json(json.dumps(meta["behavior_vocab"])) == shop.behavior_vocab


def test_ml100k_keeps_the_rating_vocabulary_and_targets_every_rating(tiny):
    assert tiny.behavior_vocab == RATING_VOCAB and RATING_VOCAB.value_meaning == "rating"
    assert set(RATING_VOCAB.target_names()) == {"liked", "watched", "disliked"}
    plain = split_leave_one_out(tiny.events)
    assert split_leave_one_out(tiny.events, targets=RATING_VOCAB.target_names()).hash == plain.hash
    assert "target_behaviors" not in plain.report


def test_movielens_narratives_are_unchanged_by_the_vocabulary(tiny):
    from llmrec.llm.tokens import load_narrative_tokenizer

    tok = load_narrative_tokenizer()
    plain = render_narratives(tiny.events, tiny.items, None, NarrativeConfig(max_tokens=200), tok)
    with_vocab = render_narratives(tiny.events, tiny.items, None, NarrativeConfig(max_tokens=200), tok,
                                   behaviors=tiny.behavior_vocab, queries=tiny.queries)
    assert [n.model_dump() for n in with_vocab] == [n.model_dump() for n in plain]
    assert len(tiny.queries) == 0


def test_common_types_and_code_built_datasets(tiny):
    assert COMMON_BEHAVIORS["view"].polarity == "neutral" and not COMMON_BEHAVIORS["view"].is_target
    assert COMMON_BEHAVIORS["purchase"].is_target and not COMMON_BEHAVIORS["search"].is_target
    assert COMMON_BEHAVIORS["skip"].polarity == "negative" and not COMMON_BEHAVIORS["skip"].is_target
    with pytest.raises(DataError, match=r"unknown behaviour type\(s\) 'zap' \(1 events\)"):
        vocab_for({"zap": 1, "view": 2}, "none")
    with pytest.raises(DataError, match=r"target behaviours \['view2'\] are not item behaviours"):
        RATING_VOCAB.target_names(["view2"])
    assert RATING_VOCAB.target_names(["liked"]) == ("liked",)


# --- Split and narratives ---------------------------------------------------------------------------


def test_targets_split_on_the_last_two_target_events_and_leaves_later_events_out():
    t = [T0 + timedelta(hours=h) for h in range(7)]
    ev = pd.DataFrame({"user_id": ["a"] * 7 + ["b"] * 2, "item_id": list("1234567") + ["1", "2"],
                       "timestamp": pd.to_datetime(t + t[:2], utc=True).astype("datetime64[s, UTC]"),
                       "behavior": ["view", "purchase", "view", "cart", "view", "purchase", "view", "view", "cart"],
                       "value": np.nan})
    split = split_leave_one_out(ev, min_events=3, targets=("cart", "purchase"))
    assert list(split.test["item_id"]) == ["6"] and list(split.valid["item_id"]) == ["4"]
    assert list(split.train["item_id"]) == ["1", "2", "3", "1", "2"]  # b has one target only: all in train
    assert split.report["events_after_valid_target"] == 2 and split.report["target_behaviors"] == ["cart", "purchase"]
    assert split.report["users_too_short"] == 1
    assert split.history("test")["timestamp"].max() < split.test["timestamp"].min()


def test_cold_user_target_is_the_first_target_event_after_the_shown_ones():
    from llmrec.data import ItemVocab
    from llmrec.eval.protocol import cold_user_views

    t = [T0 + timedelta(hours=h) for h in range(4)]
    holdout = pd.DataFrame({"user_id": ["c"] * 4, "item_id": ["1", "2", "3", "4"],
                            "timestamp": pd.to_datetime(t, utc=True).astype("datetime64[s, UTC]"),
                            "behavior": ["view", "view", "view", "purchase"], "value": np.nan})
    vocab = ItemVocab(ids=("1", "2", "3", "4"))
    views = cold_user_views(holdout, (0, 1), vocab, ("purchase",))
    assert [list(v.targets) for v in views.values()] == [[4], [4]]
    assert [list(h) for h in views["cold_user_1"].histories] == [[1]]
    plain = cold_user_views(holdout, (1,), vocab)
    assert list(plain["cold_user_1"].targets) == [2]


def test_count_log_narrative_shows_the_counts(plays):
    from llmrec.llm.tokens import load_narrative_tokenizer

    tok = load_narrative_tokenizer()
    user = min(plays.events["user_id"].unique())
    mine = plays.events[plays.events["user_id"] == user]
    counted = render_narratives(mine, plays.items, None, NarrativeConfig(), tok, behaviors=plays.behavior_vocab)[0]
    once = render_narratives(mine, plays.items, None, NarrativeConfig(), tok)[0]
    title = plays.items.set_index("item_id")["title"]
    for r in mine.itertuples():
        line = next(ln for ln in counted.text.split("\n") if f"| {title[r.item_id]} (" in ln)
        assert line.split(" | ")[0].endswith(f" play x{int(r.value)}" if r.value > 1 else " play")
    assert " play x" in counted.text and " play x" not in once.text  # without the vocabulary: one event, once
    assert counted.n_tokens == len(tok(counted.text, add_special_tokens=False)["input_ids"])


def test_narrative_weights_extend_only_the_default_config():
    vocab = BehaviorVocab(value_meaning="none", specs=(BehaviorSpec(name="wishlist", polarity="positive", weight=1.5),
                                                       BehaviorSpec(name="tag", polarity="positive"),
                                                       BehaviorSpec(name="cart", polarity="neutral")))
    default = narrative_weights(NarrativeConfig(), vocab)
    assert default["wishlist"] == 1.5 and default["tag"] == 1.0 and default["cart"] == 2.0 and default["liked"] == 3.0
    assert narrative_weights(NarrativeConfig.model_validate_json(NarrativeConfig().model_dump_json()), vocab) == default
    assert narrative_weights(NarrativeConfig(behavior_weights={"liked": 1.0}), vocab) == {"liked": 1.0}


def test_multi_behaviour_narrative_shows_types_and_recent_queries(shop):
    import re

    from llmrec.llm.tokens import load_narrative_tokenizer

    tok = load_narrative_tokenizer()
    split = split_leave_one_out(shop.events, targets=shop.behavior_vocab.target_names())
    as_of = split.as_of("test")
    history = split.history("test")
    for budget in (1024, 64):
        args = (history, shop.items, as_of, NarrativeConfig(max_tokens=budget), tok)
        narratives = render_narratives(*args, behaviors=shop.behavior_vocab, queries=shop.queries)
        without = {n.user_id: n for n in render_narratives(*args)}
        for n in narratives:
            lines = n.text.split("\n")
            assert lines[-1].startswith('searched: "') and len(lines) == len(n.item_ids) + 1
            assert n.fits_budget and len(tok(n.text, add_special_tokens=False)["input_ids"]) == n.n_tokens
            if budget == 1024:  # room for all: the item lines are exactly those of a narrative without queries
                assert "\n".join(lines[:-1]) == without[n.user_id].text
            else:
                assert len(n.item_ids) <= len(without[n.user_id].item_ids)
            mine = shop.queries[(shop.queries["user_id"] == n.user_id) & (shop.queries["timestamp"] < as_of[n.user_id])]
            shown = re.findall(r'"([^"]*)" \(', lines[-1])
            assert shown and set(shown) <= set(mine["query"]) and len(shown) == len(set(shown)) <= MAX_QUERIES
            assert shown[0] == mine.sort_values("timestamp")["query"].iloc[-1]  # newest first
    text = "\n".join(n.text for n in narratives)
    assert " view" in text and " cart" in text and " purchase" in text and "search |" not in text


# --- End to end -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shop", "plays"])
def test_log_evaluates_every_non_llm_model_and_builds_a_recommender(name, request, tmp_path):
    from llmrec.build import build_recommender
    from llmrec.config import RecommenderConfig
    from llmrec.eval.run import run_evaluation
    from llmrec.llm import FakeBackend
    from llmrec.pipeline import Recommender

    ds = request.getfixturevalue(name)
    config = quick_config(dataset=name, models=NON_LLM_ROWS, use_llm=False, cold_lengths=(0, 2), short_lengths=(2,),
                          cold_user_share=0.2, k=5, knn_neighbors=5, towers=TINY_TOWERS,
                          sasrec=SASRecConfig(maxlen=20, hidden=16, blocks=1, epochs=1, eval_every=1, patience=1))
    run = run_evaluation(ds, config)
    targets = ["cart", "purchase"] if name == "shop" else ["play"]
    assert run.settings["target_behaviors"] == targets and run.settings["complete"]
    assert {r["model"] for r in run.records} == set(NON_LLM_ROWS)
    assert all(np.isfinite(r["value"]) for r in run.records)
    if name == "shop":  # the test targets are carts and purchases, never views
        assert run.settings["split_report"]["target_behaviors"] == targets
        chosen = run_evaluation(ds, config.model_copy(update={"target_behaviors": ("purchase",),
                                                               "models": ("popularity",)}))
        assert chosen.settings["target_behaviors"] == ["purchase"]
        assert chosen.settings["split_hash"] != run.settings["split_hash"]
    build_recommender(ds, tmp_path / "rec", RecommenderConfig(towers=TINY_TOWERS), backend=FakeBackend(), mine_users=6,
                      explain_users=2, k=5)
    rec = Recommender.load(tmp_path / "rec")
    user = min(ds.events["user_id"].unique())
    got = rec.recommend(user, k=5)
    assert len(got) == 5 and all(r.item.item_id in set(ds.items["item_id"]) for r in got)


def test_evaluate_config_target_behaviors_round_trip():
    config = EvaluateConfig(target_behaviors=("purchase",))
    assert EvaluateConfig.model_validate_json(config.model_dump_json()) == config
