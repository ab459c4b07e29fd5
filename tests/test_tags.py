from __future__ import annotations

import pytest

from llmrec.schema import Item
from llmrec.tags import (
    history_tags,
    item_attributes,
    item_tags,
    popular_tags,
    tag_attributes,
    tag_hit_rate,
    tag_hits,
)

ROMCOM = Item(item_id="1", title="Sleepless in Seattle", genres=("Comedy", "Romance"), year=1993)
TOY = Item(item_id="2", title="Toy Story", genres=("Animation", "Children's", "Comedy"), year=1995)
NOIR = Item(item_id="3", title="The Big Sleep", genres=("Film-Noir", "Mystery"), year=1946)
UNKNOWN = Item(item_id="4", title="Something", genres=("unknown",), year=None)


def test_item_attributes_are_lowercase_genres_plus_decade():
    assert item_attributes(ROMCOM) == {"comedy", "romance", "1990s"}
    assert item_attributes(NOIR) == {"film-noir", "mystery", "1940s"}
    assert item_attributes(UNKNOWN) == frozenset()


def test_item_tags_are_modifier_core_and_each_hits_its_item():
    tags = item_tags(ROMCOM)
    assert "1990s comedy" in tags and "romantic comedy" in tags
    assert "animated children's" in item_tags(TOY)
    assert "noir mystery" in item_tags(NOIR)
    for item in (ROMCOM, TOY, NOIR):
        assert item_tags(item) == item_tags(item)  # deterministic
        assert all(tag_hits(t, item) for t in item_tags(item))
    assert item_tags(UNKNOWN) == []


@pytest.mark.parametrize(
    "tag, attrs",
    [
        ("romantic comedy", {"romance", "comedy"}),
        ("funny animated movies", {"comedy", "animation"}),
        ("scary 80s films", {"horror", "1980s"}),
        ("dark film noir", {"film-noir"}),
        ("1990s science fiction", {"sci-fi", "1990s"}),
        ("'70s westerns", {"western", "1970s"}),
        ("action-adventure", {"action", "adventure"}),
        ("Kids' cartoons", {"children's", "animation"}),
        ("nineties thrillers", {"thriller", "1990s"}),
    ],
)
def test_tag_attributes_maps_modifiers_decades_and_plurals(tag, attrs):
    assert tag_attributes(tag) == frozenset(attrs)


def test_tag_naming_nothing_is_none_and_never_hits():
    assert tag_attributes("dark brooding classics") is None
    assert tag_attributes("1995s") is None  # not a decade
    assert not tag_hits("dark brooding classics", ROMCOM)


def test_tag_hits_needs_all_named_attributes():
    assert tag_hits("romantic comedy", ROMCOM)
    assert tag_hits("90s comedies", ROMCOM)
    assert not tag_hits("romantic comedy", TOY)  # TOY has comedy but not romance
    assert not tag_hits("80s comedy", ROMCOM)


def test_tag_hit_rate_counts_users_with_a_hit_in_top_k():
    predicted = [["horror", "romantic comedy"], ["noir mystery"], ["western"]]
    nxt = [ROMCOM, NOIR, TOY]
    assert tag_hit_rate(predicted, nxt, k=1) == pytest.approx(1 / 3)
    assert tag_hit_rate(predicted, nxt, k=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="next_items"):
        tag_hit_rate(predicted, nxt[:2], k=1)
    with pytest.raises(ValueError, match="k must be"):
        tag_hit_rate(predicted, nxt, k=0)


def test_baselines_rank_by_frequency_deterministically():
    hist = history_tags([ROMCOM, ROMCOM, TOY], k=2)
    assert hist[0] in item_tags(ROMCOM) and len(hist) == 2
    assert history_tags([], k=5) == []
    pop = popular_tags([[ROMCOM, TOY], [TOY], [NOIR]], k=3)
    assert pop[0] in item_tags(TOY)
    assert pop == popular_tags([[ROMCOM, TOY], [TOY], [NOIR]], k=3)


def test_history_tags_hit_real_users_more_often_than_a_wrong_guess(tiny):
    """On real data a user's past tags must beat tags naming a rare genre combination."""
    items = tiny.item_index
    users = sorted(tiny.events["user_id"].unique())
    past, nxt = [], []
    for u in users:
        ids = tiny.events.loc[tiny.events["user_id"] == u, "item_id"].tolist()
        past.append(history_tags([items[i] for i in ids[:-1]], k=10))
        nxt.append(items[ids[-1]])
    assert tag_hit_rate(past, nxt, k=10) > tag_hit_rate([["noir western"]] * len(users), nxt, k=10)
