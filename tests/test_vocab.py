"""The attribute vocabulary on a small Amazon-shaped catalogue (categories, brand, description, no year)."""

from __future__ import annotations

import json
from pathlib import Path
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from llmrec.config import TowerConfig, VocabConfig
from llmrec.data import Dataset, DataError
from llmrec.data.split import split_leave_one_out
from llmrec.schema import Domain, Item
from llmrec.tags import history_tags, item_tags, popular_tags, tag_attributes, tag_hit_rate, tag_hits
from llmrec.vocab import (build_vocabulary, load_vocabulary, movie_vocabulary, plurals, save_vocabulary,
                          vocabulary_of)

MAGAZINES = Domain(item="magazine", items="magazines", user="reader")
# (second-level category, brands, description words): each group reads like one shelf of a magazine shop.
SHELVES = [
    ("Crafts & Hobbies", ["Annie's", "F+W Media"], "knitting quilting patterns yarn sewing projects"),
    ("Cooking, Food & Wine", ["Meredith", "Conde Nast"], "recipes kitchen wine chefs seasonal dinners"),
    ("Sports & Recreation", ["Time Inc", "Outside"], "fitness running cycling training athletes"),
    ("Travel, City & Regional", ["Conde Nast", "Outside"], "destinations hotels beaches adventure guides"),
]
N_ITEMS, N_USERS = 40, 30


def amazon_items() -> pd.DataFrame:
    rows = []
    for n in range(N_ITEMS):
        shelf, brands, words = SHELVES[n % len(SHELVES)]
        w = words.split()
        rows.append({
            "item_id": f"B{n:04d}",
            "title": f"{brands[(n // len(SHELVES)) % 2]} {w[n % len(w)].title()} Monthly",
            "genres": ["Magazine Subscriptions", shelf] + (["Women's Interest"] if n % 5 == 0 else []),
            "year": None,
            "text": f"Each issue brings {w[n % len(w)]} and {w[(n + 1) % len(w)]}, plus {w[(n + 2) % len(w)]}.",
            "brand": brands[(n // len(SHELVES)) % 2],
        })
    return pd.DataFrame(rows).astype({"year": "Int32"})


def amazon_dataset() -> Dataset:
    """30 readers, each staying mostly on one shelf, 8..13 ratings in time order."""
    rng = np.random.default_rng(0)
    t0 = datetime(2016, 1, 1, tzinfo=timezone.utc)
    events = []
    for u in range(N_USERS):
        shelf = u % len(SHELVES)
        for e in range(8 + u % 6):
            own = rng.random() < 0.8
            item = (shelf + len(SHELVES) * rng.integers(0, N_ITEMS // len(SHELVES))) if own else rng.integers(0, N_ITEMS)
            rating = float(rng.integers(3, 6))
            events.append({"user_id": f"A{u:03d}", "item_id": f"B{int(item):04d}",
                           "timestamp": t0 + timedelta(days=e * 7 + u), "behavior": "liked" if rating >= 4 else
                           "purchased", "value": rating})
    ev = pd.DataFrame(events).drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)
    ev["timestamp"] = pd.to_datetime(ev["timestamp"], utc=True).astype("datetime64[s, UTC]")
    users = pd.DataFrame({"user_id": sorted(ev["user_id"].unique())})
    return Dataset(name="amazon-tiny", events=ev, items=amazon_items(), users=users, domain=MAGAZINES)


@pytest.fixture(scope="module")
def amazon() -> Dataset:
    return amazon_dataset()


@pytest.fixture(scope="module")
def vocab(amazon):
    return vocabulary_of(amazon)


def test_amazon_items_get_categories_brand_and_keywords_but_no_root_or_decade(amazon, vocab):
    assert "magazine subscriptions" not in vocab.categories  # on every item: a root, says nothing
    assert "crafts & hobbies" in vocab.categories and "women's interest" in vocab.categories
    assert vocab.decades is False and vocab.brands == ("annie's", "conde nast", "f+w media", "meredith",
                                                        "outside", "time inc")
    item = amazon.item_index["B0000"]
    attrs = vocab.item_attributes(item)
    assert {"crafts & hobbies", "women's interest", "brand:annie's"} <= attrs
    assert vocab.item_keywords(item) and set(vocab.item_keywords(item)) <= attrs
    assert all(vocab.item_attributes(it) for it in amazon.item_index.values())  # every item has an attribute


def test_amazon_tags_map_onto_attributes_and_each_item_tag_hits_its_item(amazon, vocab):
    assert tag_attributes("crafts magazines", vocab) == {"crafts & hobbies"}
    assert tag_attributes("hobby crafts", vocab) is not None
    assert tag_attributes("Conde Nast travel", vocab) == {"brand:conde nast", "travel, city & regional"}
    assert tag_attributes("knitting", vocab) == {"knitting"}
    assert tag_attributes("90s comedy", vocab) is None  # no years, no genres here: names nothing
    for item in amazon.item_index.values():
        tags = item_tags(item, vocab)
        assert tags and all(tag_hits(t, item, vocab) for t in tags), (item.item_id, tags)
    assert tag_hits("knitting crafts", amazon.item_index["B0000"], vocab)
    assert not tag_hits("cooking", amazon.item_index["B0000"], vocab)


def test_amazon_history_tags_beat_a_wrong_shelf(amazon, vocab):
    index, past, nxt = amazon.item_index, [], []
    for _, g in amazon.events.groupby("user_id"):
        ids = g["item_id"].tolist()
        past.append(history_tags([index[i] for i in ids[:-1]], 5, vocab))
        nxt.append(index[ids[-1]])
    wrong = [["wine cooking"] if "crafts" in p[0] else ["knitting crafts"] for p in past]
    assert tag_hit_rate(past, nxt, 5, vocab) > tag_hit_rate(wrong, nxt, 1, vocab)
    pop = popular_tags([[index["B0000"], index["B0004"]], [index["B0004"]]], 3, vocab)
    assert len(pop) == 3 and set(pop) <= set(item_tags(index["B0004"], vocab))


def test_vocabulary_round_trips_through_json(tmp_path, vocab):
    path = save_vocabulary(vocab, tmp_path)
    data = json.loads(path.read_text())
    assert data["format"].startswith("llmrec.attribute-vocab/") and data["domain"]["item"] == "magazine"
    again = load_vocabulary(tmp_path)
    assert again == vocab and again.item_tags(Item(item_id="x", title="Knitting", genres=("Crafts & Hobbies",))) \
        == vocab.item_tags(Item(item_id="x", title="Knitting", genres=("Crafts & Hobbies",)))
    (tmp_path / "m").mkdir()
    movie = save_vocabulary(movie_vocabulary(), tmp_path / "m")
    assert load_vocabulary(movie) == movie_vocabulary()


def test_bad_vocabulary_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_vocabulary(tmp_path)
    (tmp_path / "vocab.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="vocab.json.*format"):
        load_vocabulary(tmp_path)
    (tmp_path / "vocab.json").write_text('{"format": "llmrec.attribute-vocab/1"}')
    with pytest.raises(DataError, match="bad attribute vocabulary"):
        load_vocabulary(tmp_path)
    with pytest.raises(DataError, match="at least one item"):
        build_vocabulary([])


def test_movie_domain_uses_the_movie_lexicon_and_no_keywords(tiny):
    v = vocabulary_of(tiny)
    assert v == movie_vocabulary()  # ML-100K tags are exactly what they were before vocabularies
    assert v.keyword_idf == {} and tag_attributes("funny 90s movies", v) == {"comedy", "1990s"}


def test_vocab_config_switches_change_the_vocabulary(amazon):
    items = list(amazon.item_index.values())
    base = build_vocabulary(items, MAGAZINES)
    assert build_vocabulary(items, MAGAZINES, VocabConfig(keywords=False)).keyword_idf == {}
    assert build_vocabulary(items, MAGAZINES, VocabConfig(brands=False)).brands == ()
    assert "magazine subscriptions" in build_vocabulary(items, MAGAZINES, VocabConfig(max_category_share=1.0)).categories
    rare = build_vocabulary(items, MAGAZINES, VocabConfig(min_category_items=9))
    assert "women's interest" not in rare.categories and "crafts & hobbies" in rare.categories
    assert len(build_vocabulary(items, MAGAZINES, VocabConfig(max_keywords=3)).keyword_idf) == 3
    assert len(build_vocabulary(items, MAGAZINES, VocabConfig(min_df=100)).keyword_idf) == 0
    assert len(build_vocabulary(items, MAGAZINES, VocabConfig(max_df=0.01)).keyword_idf) == 0
    one = build_vocabulary(items, MAGAZINES, VocabConfig(keywords_per_item=1))
    assert max(len(one.item_keywords(it)) for it in items) == 1 < max(len(base.item_keywords(it)) for it in items)
    movie = build_vocabulary(items, MAGAZINES, VocabConfig(movie_lexicon=True))
    assert tag_attributes("funny", movie) == {"comedy"} and tag_attributes("funny", base) is None
    dated = [it.model_copy(update={"year": 2015}) for it in items]
    assert "2010s" in build_vocabulary(dated, MAGAZINES).item_attributes(dated[0])
    assert "2010s" not in build_vocabulary(dated, MAGAZINES, VocabConfig(decades=False)).item_attributes(dated[0])


def test_plurals():
    assert plurals("story") == ["stories", "storys"] and plurals("box") == ["boxes"] and plurals("war") == ["wars"]
    assert plurals("day") == ["days"]


def test_towers_train_on_amazon_with_a_tag_loss(amazon):
    from retrieval.train import train_towers

    config = TowerConfig(encoder="hashed-bow", dim=16, hidden=32, epochs=2, patience=2, max_len=20,
                         uniform_negatives=16, beta_grid=(0.5, 1.0))
    result = train_towers(amazon, split_leave_one_out(amazon.events), config)
    report = result.report
    assert report["tag_pairs"] > 0 and report["items_with_tags"] == N_ITEMS
    assert all(h["l_tag"] > 0 for h in report["history"])
    assert 0.0 <= report["test"]["ndcg@10"] <= 1.0


def test_towers_train_without_any_tag_degrade_to_no_tag_loss(amazon, caplog):
    from retrieval.train import train_towers

    bare = amazon.items.assign(genres=[[] for _ in range(N_ITEMS)], brand=None, text=None,
                               title=[f"#{n}" for n in range(N_ITEMS)])
    ds = Dataset(name="bare", events=amazon.events, items=bare, users=amazon.users, domain=MAGAZINES)
    config = TowerConfig(encoder="hashed-bow", dim=16, hidden=32, epochs=1, max_len=20, uniform_negatives=16,
                         beta_grid=(1.0,))
    result = train_towers(ds, split_leave_one_out(ds.events), config)
    assert result.report["tag_pairs"] == 0 and result.report["history"][0]["l_tag"] == 0.0
    assert "without the tag losses" in caplog.text


GOLDEN = Path(__file__).parent / "golden" / "movie_prompts.json"


@pytest.mark.parametrize("name", ["interests", "imagine_history", "rank"])
def test_movie_prompts_render_byte_identical_to_before_the_domain_nouns(name):
    """The LoRA adapter was trained on these exact prompts: MovieLens must render what it always did."""
    from llmrec.llm.prompts import render_prompt
    from llmrec.nouns import prompt_nouns

    for case in json.loads(GOLDEN.read_text())[name]:
        assert render_prompt(name, **case["vars"], **prompt_nouns()) == case["messages"]
        assert render_prompt(name, **case["vars"], **prompt_nouns(movie_vocabulary())) == case["messages"]


def test_amazon_prompts_name_the_domain_and_its_own_tags(amazon, vocab):
    from llmrec.config import ColdStartConfig, MiningConfig, RerankConfig
    from llmrec.coldstart import imagine_messages
    from llmrec.interests import interest_messages
    from llmrec.rerank import rank_messages

    system = interest_messages("Annie's Knitting Monthly | liked", MiningConfig(), vocab)[0]["content"]
    assert "a magazine reader's history" in system and "movie" not in system
    assert f'"{vocab.example_tags[0]}"' in system and "tags for magazines this reader" in system
    rank = rank_messages("1. x", amazon.item_index["B0000"], ["knitting"], RerankConfig(), vocab)
    assert "whether a magazine reader will like a magazine" in rank[0]["content"]
    assert "Reader interests: knitting" in rank[1]["content"] and "Candidate magazine:" in rank[1]["content"]
    cold = imagine_messages({"age": "31"}, [], [], ColdStartConfig(), vocab)
    text = cold[0]["content"] + cold[1]["content"]
    assert "movie" not in text and "viewer" not in text and "magazines this reader" in text


def test_prompt_nouns_fall_back_to_neutral_examples():
    from llmrec.nouns import prompt_nouns

    bare = build_vocabulary([Item(item_id="1", title="#1")], Domain(item="item", items="items", user="user"))
    nouns = prompt_nouns(bare)
    assert nouns["a_user"] == "a user" and nouns["a_item"] == "an item"
    assert nouns["interest_examples"] == '"a favourite kind of items"' and nouns["traits"] == "categories"


def test_sft_examples_build_on_amazon(amazon, vocab):
    from finetune.build_sft import build_sft_examples
    from llmrec.config import FinetuneConfig, MiningConfig

    class Words:  # a whitespace tokenizer is enough for the narrative budget here
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [t.split() for t in texts]}

        def encode(self, text, add_special_tokens=False):
            return text.split()

    split = split_leave_one_out(amazon.events)
    config = FinetuneConfig(min_events_before_cut=3, n_interests=2, n_tags=4, tag_horizon=5)
    examples, report = build_sft_examples(split.train, amazon.item_index, amazon.items, config, Words(),
                                          MiningConfig(min_interests=1, max_interests=5), vocab)
    assert examples, report.to_dict()
    answer = json.loads(examples[0].messages[-1]["content"])
    tags = [t for _, interest_tags in answer for t in interest_tags]  # answer format 5: [name, tags]
    assert tags and all(tag_attributes(t, vocab) for t in tags)
    assert "magazine reader" in examples[0].messages[0]["content"]


def test_mining_fallback_uses_the_dataset_vocabulary(amazon, vocab):
    from llmrec.config import MiningConfig
    from llmrec.interests import fallback_profile

    history = [amazon.item_index[i] for i in ("B0000", "B0004", "B0008")]
    profile = fallback_profile("A000", history, MiningConfig(), "fake", vocab)
    assert profile.tags and all(tag_attributes(t.text, vocab) for t in profile.tags)
    assert profile.interests[0].evidence  # the tag's items are found with the same vocabulary
    assert fallback_profile("A000", history, MiningConfig(), "fake").tags == ()  # the movie lexicon finds nothing
