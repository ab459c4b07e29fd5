"""Every stage reads the dataset's behaviour vocabulary (issue 15): SFT narratives and taste weights, negative
feedback kept out of retrieval training, cold-start wording, explanations' verbs and evidence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from finetune.build_sft import (
    TASTE_WEIGHTS,
    build_cut_examples,
    build_sft_examples,
    taste_weights,
)
from llmrec.config import FinetuneConfig, MiningConfig
from llmrec.data import Dataset
from llmrec.data.behaviors import (
    COMMON_BEHAVIORS,
    RATING_VOCAB,
    BehaviorSpec,
    BehaviorVocab,
)
from llmrec.data.split import split_leave_one_out

T0 = datetime(2024, 3, 1, tzinfo=UTC)
CATS = ("shoes", "lamps", "books", "tea")
# A store log with a declared custom type (wishlist) and a negative one (skip) next to common ones.
STORE_VOCAB = BehaviorVocab(value_meaning="none", specs=(
    BehaviorSpec(name="wishlist", polarity="positive", weight=1.5), COMMON_BEHAVIORS["view"],
    COMMON_BEHAVIORS["purchase"], COMMON_BEHAVIORS["skip"], COMMON_BEHAVIORS["search"]))


def store_dataset(n_users: int = 16, n_items: int = 36, seed: int = 0) -> Dataset:
    """Per user and day: a search, a view, a wishlist or purchase of a favourite-category item, and a skipped
    item of another category; the skipped items are never bought by anyone."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [f"P{i:02d}" for i in range(n_items)],
                          "title": [f"{CATS[i % len(CATS)].title()} no. {i}" for i in range(n_items)],
                          "genres": [[CATS[i % len(CATS)]] for i in range(n_items)],
                          "year": pd.array([2015 + i % 6 for i in range(n_items)], dtype="Int32"),
                          "text": None, "brand": None})
    skipped = [i for i in range(n_items) if i % 9 == 8]
    rows, queries = [], []
    for u in range(n_users):
        own = [i for i in range(u % len(CATS), n_items, len(CATS)) if i not in skipped]
        for d in range(8):
            t = T0 + timedelta(days=d, hours=u)
            queries.append((f"u{u:02d}", t, f"{CATS[u % len(CATS)]} day {d}"))
            i = int(rng.choice(own))
            rows += [(f"u{u:02d}", f"P{i:02d}", t + timedelta(minutes=1), "view"),
                     (f"u{u:02d}", f"P{i:02d}", t + timedelta(minutes=2), "purchase" if d % 2 else "wishlist"),
                     (f"u{u:02d}", f"P{skipped[(u + d) % len(skipped)]:02d}", t + timedelta(minutes=3), "skip")]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "behavior"]).assign(value=np.nan)
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True).astype("datetime64[s, UTC]")
    q = pd.DataFrame(queries, columns=["user_id", "timestamp", "query"])
    q["timestamp"] = pd.to_datetime(q["timestamp"], utc=True).astype("datetime64[s, UTC]")
    users = pd.DataFrame({"user_id": sorted(events["user_id"].unique())})
    return Dataset(name="store", events=events, items=items, users=users, behaviors=STORE_VOCAB, queries=q)


@pytest.fixture(scope="module")
def store() -> Dataset:
    return store_dataset()


@pytest.fixture(scope="module")
def tokenizer():
    from llmrec.llm.model import load_tokenizer

    return load_tokenizer()


# --- 1. SFT narratives and taste weights ---------------------------------------------------------------------


def test_taste_weights_follow_the_vocabulary():
    assert taste_weights(None) == TASTE_WEIGHTS
    assert taste_weights(RATING_VOCAB) == {"liked": 2.0, "watched": 1.0}  # the rating words' old table entries
    store = taste_weights(STORE_VOCAB)
    assert store == {"wishlist": 1.5, "purchase": TASTE_WEIGHTS["purchase"]}  # never view, skip or search
    redeclared = BehaviorVocab(specs=(BehaviorSpec(name="click", polarity="negative"),
                                      BehaviorSpec(name="tag", polarity="positive")))
    assert taste_weights(redeclared) == {"tag": 1.0}  # a common name re-declared negative no longer votes


def test_ml100k_sft_examples_are_unchanged_by_the_vocabulary(tiny, tokenizer):
    split = split_leave_one_out(tiny.events)
    config = FinetuneConfig(cut_fractions=(0.5, 0.8), narrative_max_tokens=200, n_tags=8, tag_horizon=6)
    old, old_report = build_sft_examples(split.train, tiny.item_index, tiny.items, config, tokenizer)
    new, new_report = build_sft_examples(split.train, tiny.item_index, tiny.items, config, tokenizer,
                                         behaviors=tiny.behavior_vocab, queries=tiny.queries)
    assert tiny.behavior_vocab == RATING_VOCAB and len(old) > 20
    assert [e.messages for e in new] == [e.messages for e in old] and new_report.to_dict() == old_report.to_dict()


def test_sft_narratives_show_declared_types_and_only_earlier_queries(store, tokenizer):
    split = split_leave_one_out(store.events, targets=store.behavior_vocab.target_names())
    config = FinetuneConfig(cut_fractions=(0.4, 0.7), narrative_max_tokens=400, n_tags=2, tag_horizon=6,
                            n_interests=1)
    mining = MiningConfig(min_interests=1, max_interests=1)
    built, report = build_cut_examples(split.train, store.item_index, store.items, config, tokenizer, mining,
                                       behaviors=store.behavior_vocab, queries=store.queries)
    bare, _ = build_cut_examples(split.train, store.item_index, store.items, config, tokenizer, mining)
    assert len(built) > 10, report.to_dict()
    for b in built:
        text = b.narrative.text
        assert " wishlist" in text and " purchase" in text and " skip" in text
        line = text.split("\n")[-1]
        assert line.startswith('searched: "')
        mine = store.queries[store.queries["user_id"] == b.cut.user_id]
        before = set(mine.loc[mine["timestamp"] < b.cut.t, "query"])
        later = set(mine.loc[mine["timestamp"] >= b.cut.t, "query"])
        shown = {q.split('" (')[0] for q in line.removeprefix('searched: "').split(', "')}
        assert shown and shown <= before and not shown & later
        assert b.example.messages[1]["content"].count("searched:") == 1  # the prompt carries it
    # Without the vocabulary the declared type is not intentional (dropped) and no query line appears.
    assert all(" wishlist" not in b.narrative.text and "searched:" not in b.narrative.text for b in bare)


def test_ranker_narratives_show_declared_types_and_only_queries_before_the_target(store, tokenizer):
    import re

    from finetune.build_ranker import build_ranker_examples, last_train_cuts
    from llmrec.config import ListwiseConfig
    from llmrec.data import ItemVocab
    from retrieval.baselines import PopularityScorer

    split = split_leave_one_out(store.events, targets=store.behavior_vocab.target_names())
    vocab = ItemVocab.from_items(store.items)
    examples, report = build_ranker_examples(split.train, store.item_index, store.items, vocab,
                                             PopularityScorer.fit(split.train, vocab), ListwiseConfig(candidates=5),
                                             tokenizer, behaviors=store.behavior_vocab, queries=store.queries)
    cut = last_train_cuts(split.train, 3).set_index("user_id")["timestamp"]
    assert len(examples) == len(cut) > 10, report.to_dict()
    for ex in examples:
        prompt = "\n".join(m["content"] for m in ex.messages[:-1])
        assert " wishlist" in prompt
        shown = set(re.findall(r'"(\w+ day \d+)"', prompt))
        mine = store.queries[store.queries["user_id"] == ex.user_id]
        assert shown and shown <= set(mine.loc[mine["timestamp"] < cut[ex.user_id], "query"])


# --- 2. Negative feedback is never a training positive ---------------------------------------------------------


def test_training_events_drop_negative_types_and_keep_rating_logs_as_they_are(store, tiny):
    from llmrec.data.behaviors import training_events

    split = split_leave_one_out(store.events, targets=store.behavior_vocab.target_names())
    kept = training_events(split.train, store.behavior_vocab)
    assert (split.train["behavior"] == "skip").sum() > 20 and "skip" not in set(kept["behavior"])
    assert len(kept) == (split.train["behavior"] != "skip").sum()
    ml = split_leave_one_out(tiny.events, targets=tiny.behavior_vocab.target_names())
    assert training_events(ml.train, tiny.behavior_vocab) is ml.train  # ML-100K: the very same training pairs
    assert "disliked" in set(ml.train["behavior"])  # a rating's dislike is a target, so it stays


def _recorded_sequences(monkeypatch, module) -> list[pd.DataFrame]:
    """The event tables `module` turns into item sequences, in call order (the first: training)."""
    seen: list[pd.DataFrame] = []
    real = module.user_sequences

    def record(events, vocab):
        seen.append(events)
        return real(events, vocab)

    monkeypatch.setattr(module, "user_sequences", record)
    return seen


def test_sasrec_and_towers_never_train_on_skips(store, tiny, monkeypatch):
    import retrieval.train as towers
    from llmrec.config import SASRecConfig, TowerConfig
    from llmrec.data import ItemVocab
    from retrieval import sasrec

    tiny_towers = TowerConfig(encoder="hashed-bow", dim=8, hidden=16, epochs=1, patience=1, max_len=12, layers=1,
                              heads=1, uniform_negatives=16, beta_grid=(0.5, 1.0), tag_batch_size=64)
    small = SASRecConfig(maxlen=20, hidden=16, blocks=1, epochs=1, eval_every=1, patience=1)
    for ds, negatives in ((store, 1), (tiny, 0)):
        split = split_leave_one_out(ds.events, targets=ds.behavior_vocab.target_names())
        vocab = ItemVocab.from_items(ds.items)
        seen = _recorded_sequences(monkeypatch, sasrec)
        sasrec.train_sasrec(split, vocab, small, behaviors=ds.behavior_vocab)
        seen_towers = _recorded_sequences(monkeypatch, towers)
        towers.fit_towers(ds, split, tiny_towers)
        for train in (seen[0], seen_towers[0]):
            assert "skip" not in set(train["behavior"])
            if negatives:
                assert len(train) == (split.train["behavior"] != "skip").sum() < len(split.train)
            else:  # ML-100K: every training event, in order (its training pairs are unchanged)
                assert train is split.train


# --- 3. Cold start imagines the dataset's main positive type ----------------------------------------------------


def test_main_positive_type_per_vocabulary():
    from llmrec.data.behaviors import main_positive
    from llmrec.errors import DataError

    assert main_positive(RATING_VOCAB) == main_positive(None) == "liked"
    assert main_positive(STORE_VOCAB) == "purchase"  # weight 3 beats the declared wishlist's 1.5
    assert main_positive(BehaviorVocab(value_meaning="count", specs=(COMMON_BEHAVIORS["play"],))) == "play"
    only_views = BehaviorVocab(specs=(BehaviorSpec(name="view", polarity="neutral", target=True),))
    assert main_positive(only_views) == "view"
    with pytest.raises(DataError, match="no positive or target"):
        main_positive(BehaviorVocab(specs=(COMMON_BEHAVIORS["skip"],)))


def _cold_world(ds: Dataset):
    from llmrec.coldstart import Catalogue, ExamplePool
    from retrieval.encoder import encode_hashed_bow

    profiles = {u: ds.profile(u) for u in ds.users["user_id"]}
    pool = ExamplePool.from_events(ds.events, profiles, ds.item_index, n_items=3)
    return Catalogue(list(ds.item_index.values()), encode_hashed_bow), pool


def test_cold_start_imagines_and_words_the_main_positive_type(store, tiny):
    import json

    from llmrec.coldstart import imagine_histories
    from llmrec.coldstart_fusion import early_fusion
    from llmrec.config import ColdStartConfig
    from llmrec.errors import DataError
    from llmrec.llm import FakeBackend
    from llmrec.vocab import vocabulary_of

    config = ColdStartConfig(n_imagined=2, n_examples=2, example_items=3, sim_threshold=0.5)
    history = store.history("u01").model_copy(update={"events": store.history("u01").events[:2]})
    store_item = next(i for i in store.item_index.values() if i.item_id not in {e.item_id for e in history.events})
    shop_answer = json.dumps({"m": [{"t": store_item.title, "g": list(store_item.genres), "y": store_item.year}]})
    catalogue, pool = _cold_world(store)
    asked: list = []
    backend = FakeBackend(lambda m, s: asked.append(m) or shop_answer)
    out, _ = imagine_histories([("u01", {}, history.events)], backend, config, catalogue, pool,
                               attrs=vocabulary_of(store), behaviors=store.behavior_vocab)
    prompt = "\n".join(m["content"] for m in asked[0])
    assert "buys first" in prompt and "They have bought:" in prompt and "will likely buy first" in prompt
    fused = early_fusion(history, out[0], config, behaviors=store.behavior_vocab)
    assert [e.behavior for e in fused.events[:-2]] == ["purchase"] and fused.events[0].item_id == store_item.item_id
    with pytest.raises(DataError, match="imagined_behavior='liked'"):
        early_fusion(history, out[0], config.model_copy(update={"imagined_behavior": "liked"}),
                     behaviors=store.behavior_vocab)

    # Ratings: "liked" events and the MovieLens prompt, byte for byte what it was without a vocabulary.
    catalogue, pool = _cold_world(tiny)
    real = tiny.history("1").model_copy(update={"events": tiny.history("1").events[:2]})
    movie = next(i for i in tiny.item_index.values() if i.item_id not in {e.item_id for e in real.events})
    toy = json.dumps({"m": [{"t": movie.title, "g": list(movie.genres[:3]), "y": movie.year}]})
    with_vocab, without = [], []
    out, _ = imagine_histories([("1", real.profile, real.events)], FakeBackend(lambda m, s: with_vocab.append(m) or toy),
                               config, catalogue, pool, behaviors=tiny.behavior_vocab)
    imagine_histories([("1", real.profile, real.events)], FakeBackend(lambda m, s: without.append(m) or toy), config,
                      catalogue, pool)
    assert with_vocab == without and "watches first" in with_vocab[0][0]["content"]
    imagined = early_fusion(real, out[0], config, behaviors=tiny.behavior_vocab).events[:-2]
    assert [(e.item_id, e.behavior) for e in imagined] == [(movie.item_id, "liked")]


# --- 4. Explanations cite positive events and name the behaviour ------------------------------------------------


def test_citable_history_prefers_positive_events_and_never_cites_negative_ones(tiny):
    from explain.facts import citable_history

    ids = ["A", "B", "B", "C", "D", "E"]
    acts = ["view", "wishlist", "purchase", "skip", None, "view"]
    assert citable_history(ids, acts, STORE_VOCAB) == (["B", "B", "D"], {"B": "purchase"})  # purchase over wishlist
    assert citable_history(["A", "C", "E"], ["view", "skip", "view"], STORE_VOCAB) == (["A", "E"], {"A": "view",
                                                                                                     "E": "view"})
    assert citable_history(["C"], ["skip"], STORE_VOCAB) == ([], {})
    # Ratings: every rated item stays citable (disliked included), in order, as before the vocabulary.
    user = tiny.events[tiny.events["user_id"] == "1"]
    got, _ = citable_history(user["item_id"].tolist(), user["behavior"].tolist(), tiny.behavior_vocab)
    assert got == user["item_id"].tolist() and "disliked" in set(user["behavior"])


def test_explanations_name_the_behaviour_and_pass_the_closed_world_check(tiny):
    from explain.check import check_explanation
    from explain.explain import template_text
    from explain.facts import build_facts
    from llmrec.config import ExplainConfig

    items = list(tiny.item_index.values())
    target = next(i for i in items if i.genres)
    history = [i for i in items if i.item_id != target.item_id and set(i.genres) & set(target.genres)][:2]
    config = ExplainConfig()
    shop = build_facts(target, None, history, 2, tiny.domain, {history[0].item_id: "purchase",
                                                                history[1].item_id: "cart"})
    text = template_text(shop, config)
    assert sorted(shop.acts) == ["added {} to your cart", "bought {}"]
    assert text.startswith("You bought ") and " to your cart; " in text, text
    assert check_explanation(text, shop, max_chars=400) is None
    played = build_facts(target, None, history, 2, tiny.domain, {i.item_id: "play" for i in history})
    assert template_text(played, config).startswith("You played ")
    # Rating words: no acts, the very MovieLens sentence ("You liked ...") of facts built without behaviours.
    rated = build_facts(target, None, history, 2, tiny.domain, {history[0].item_id: "liked",
                                                                 history[1].item_id: "disliked"})
    plain = build_facts(target, None, history, 2, tiny.domain)
    assert rated == plain and rated.acts == () and template_text(rated, config).startswith("You liked ")


def test_recommender_cites_no_skipped_item_and_saves_its_behaviours(store, tmp_path):
    import json

    from explain.explain import template_text
    from llmrec.build import build_recommender
    from llmrec.config import RecommenderConfig, TowerConfig
    from llmrec.llm import FakeBackend
    from llmrec.pipeline import Recommender

    towers = TowerConfig(encoder="hashed-bow", dim=8, hidden=16, epochs=1, patience=1, max_len=12, layers=1,
                         heads=1, uniform_negatives=16, beta_grid=(0.5, 1.0), tag_batch_size=64)
    config = RecommenderConfig(towers=towers)
    build_recommender(store, tmp_path / "rec", config, backend=FakeBackend(), mine_users=4, explain_users=2, k=5)
    rec = Recommender.load(tmp_path / "rec")
    assert rec.behaviors == STORE_VOCAB
    ev = store.events
    cited = bought = 0
    for user in sorted(ev["user_id"].unique())[:6]:
        mine = ev[ev["user_id"] == user]
        taken = set(mine.loc[mine["behavior"].isin(["purchase", "wishlist"]), "item_id"])
        for _, facts in rec.served_facts(user, 5):
            assert set(facts.evidence_ids) <= taken  # never an item the user only skipped or viewed
            cited += len(facts.evidence)
            if "bought {}" in facts.acts:
                assert "bought " in template_text(facts, config.explain)
                bought += 1
    assert cited > 0 and bought > 0
    # A folder from before behaviour vocabularies reads as ratings.
    (tmp_path / "rec" / "behaviors.json").unlink()
    meta = json.loads((tmp_path / "rec" / "dataset" / "dataset.json").read_text())
    meta.pop("behavior_vocab")
    (tmp_path / "rec" / "dataset" / "dataset.json").write_text(json.dumps(meta))
    assert Recommender.load(tmp_path / "rec").behaviors == RATING_VOCAB


def test_explain_prompt_says_what_the_user_did_only_with_behaviours(tiny):
    from explain.explain import explain_messages
    from explain.facts import build_facts
    from llmrec.config import ExplainConfig

    items = list(tiny.item_index.values())
    target = next(i for i in items if i.genres)
    history = [i for i in items if i.item_id != target.item_id and set(i.genres) & set(target.genres)][:2]
    shop = build_facts(target, None, history, 2, tiny.domain, {history[0].item_id: "purchase"})
    prompt = explain_messages(shop, ExplainConfig())[-1]["content"]
    assert "(bought it)" in prompt and "(liked it)" in prompt
    plain = explain_messages(build_facts(target, None, history, 2, tiny.domain), ExplainConfig())[-1]["content"]
    assert "(bought it)" not in plain and "(liked it)" not in plain


def test_self_training_rewards_follow_the_taste_weights(store):
    from finetune.self_train import reward_targets
    from llmrec.data import ItemVocab

    vocab = ItemVocab.from_items(store.items)
    after = store.events[store.events["user_id"] == "u03"].head(9)  # view, wishlist/purchase, skip per day
    got = vocab.decode(reward_targets(after, 9, vocab, taste_weights(STORE_VOCAB)))
    taken = after.loc[after["behavior"].isin(["wishlist", "purchase"]), "item_id"]
    assert got == list(dict.fromkeys(taken)) and not set(got) & set(after.loc[after["behavior"] == "skip", "item_id"])
    assert vocab.decode(reward_targets(after, 9, vocab)) == list(dict.fromkeys(after.loc[after["behavior"] == "purchase",
                                                                                          "item_id"]))
