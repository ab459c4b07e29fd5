from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from llmrec.config import MiningConfig
from llmrec.eval.grounding import (
    attribute_evidence,
    citation_grounded,
    count_grounded,
    grounding_rates,
    interest_attributes,
    names_title,
)
from llmrec.interests import mine_interests
from llmrec.llm import FakeBackend
from llmrec.schema import Interest, Item, Narrative, Tag
from llmrec.tags import item_attributes, tag_attributes

NOIR = Item(item_id="n", title="Big Sleep, The (1946)", genres=("Film-Noir", "Mystery"), year=1946)
WESTERN = Item(item_id="w", title="Stagecoach (1939)", genres=("Western",), year=1939)
ROMCOM = Item(item_id="r", title="Sleepless in Seattle (1993)", genres=("Comedy", "Romance"), year=1993)
SCIFI = Item(item_id="s", title="Alien (1979)", genres=("Horror", "Sci-Fi"), year=1979)
ITEMS = {it.item_id: it for it in (NOIR, WESTERN, ROMCOM, SCIFI)}


def test_interest_attributes_join_the_name_and_the_tags():
    assert interest_attributes("90s romantic comedies", ["dark noir"], tag_attributes) == {
        "1990s", "romance", "comedy", "film-noir"}
    assert interest_attributes("strong characters", [], tag_attributes) == frozenset()


def test_names_title_reads_stored_yearless_and_article_first_forms():
    assert names_title("fans of The Big Sleep", NOIR.title)
    assert names_title("big sleep, the (1946) lovers", NOIR.title)
    assert not names_title("big sleeper", NOIR.title)  # word-bounded
    assert not names_title("up all night", "Up (2009)")  # too short to count as named


def test_a_citation_is_grounded_by_a_shared_attribute_or_a_named_title():
    assert citation_grounded("noir mysteries", [], NOIR, tag_attributes, item_attributes)
    assert citation_grounded("strong characters", ["classic noir"], NOIR, tag_attributes, item_attributes)
    assert citation_grounded("anything like Stagecoach", [], WESTERN, tag_attributes, item_attributes)
    assert not citation_grounded("90s romantic comedies", ["romantic comedy"], NOIR, tag_attributes,
                                 item_attributes)
    assert not citation_grounded("strong characters", ["dark stuff"], NOIR, tag_attributes, item_attributes)


def test_count_grounded_uses_each_interests_own_tags_and_skips_unknown_items():
    interests = [Interest(name="classics", evidence=("n", "w")), Interest(name="love", evidence=("r", "zz"))]
    tags = [Tag(text="noir mystery", interest="classics"), Tag(text="western", interest="love")]
    # classics: noir via its tag (grounded), western not named by it; love: romance (grounded), zz unknown.
    assert count_grounded(interests, tags, ITEMS, tag_attributes, item_attributes) == 2


def test_grounding_rates_and_their_checks():
    assert grounding_rates(10, 2, 3) == {"exists": pytest.approx(0.8), "grounded": pytest.approx(0.3)}
    assert grounding_rates(0, 0, 0) == {"exists": 0.0, "grounded": 0.0}
    with pytest.raises(ValueError, match="inconsistent"):
        grounding_rates(4, 1, 4)  # a dropped line cannot be grounded


def _narrative(items) -> Narrative:
    text = "\n".join(f"liked | {it.title} ({'; '.join(it.genres)})" for it in items)
    return Narrative(user_id="u1", text=text, as_of=datetime(1998, 1, 1, tzinfo=timezone.utc),
                     n_events_in=len(items), n_items_out=len(items), n_tokens=len(text.split()), max_tokens=512,
                     item_ids=tuple(it.item_id for it in items))


def _answer(names_tags):
    """A valid answer that cites lines [1, 2] under every interest, whatever the interest says."""
    def respond(messages, schema):
        return json.dumps({"i": [{"n": n, "e": [1, 2], "t": t} for n, t in names_tags]})
    return respond


FORMAT_4 = MiningConfig(max_evidence=2)  # answers cite line numbers: the citations these tests measure
ROMANTIC = [("90s romantic comedies", ["romantic comedy"]), ("feel-good love stories", ["romantic film"]),
            ("sci-fi adventures", ["space adventure"]), ("family animation", ["animated comedy"]),
            ("war epics", ["war drama"])]


def test_citing_lines_1_2_everywhere_is_exists_1_but_grounded_low_in_mining():
    narrative = _narrative([NOIR, WESTERN, ROMCOM, SCIFI])  # lines 1, 2 are a noir and a western
    profiles, stats = mine_interests([narrative], FakeBackend(_answer(ROMANTIC)), FORMAT_4, items=ITEMS)
    assert profiles[0].source == "llm"
    assert stats.evidence_cited == 10 and stats.grounding == 1.0  # "exists": every line number is in range
    assert stats.grounded == 0.0  # no interest names noir, mystery, western, the 1930s/40s or a title
    assert stats.to_dict()["grounding_exists"] == 1.0 and stats.to_dict()["grounded"] == 0.0
    assert stats.to_dict()["llm_share"] == 1.0 and stats.to_dict()["fallback_share"] == 0.0


def test_citations_that_match_their_interest_score_grounded_in_mining():
    narrative = _narrative([ROMCOM, SCIFI, NOIR, WESTERN])  # lines 1, 2: a 90s romcom and a 70s sci-fi
    _, stats = mine_interests([narrative], FakeBackend(_answer(ROMANTIC)), FORMAT_4, items=ITEMS)
    # romcom: grounded under the 1st, 2nd and (comedy) 4th interests; Alien under the 3rd (sci-fi): 4 of 10.
    assert stats.grounding == 1.0 and stats.grounded == pytest.approx(0.4)


def test_mining_without_a_catalogue_cannot_ground():
    _, stats = mine_interests([_narrative([ROMCOM, SCIFI])], FakeBackend(_answer(ROMANTIC)), FORMAT_4)
    assert stats.grounding == 1.0 and stats.evidence_grounded == 0 and stats.grounded == 0.0


def test_attributed_evidence_prefers_more_shared_attributes_then_recency():
    romcom_90s = Item(item_id="r2", title="While You Were Sleeping (1995)", genres=("Comedy", "Romance"), year=1995)
    comedy_70s = Item(item_id="c", title="Sleeper (1973)", genres=("Comedy", "Sci-Fi"), year=1973)
    items = {it.item_id: it for it in (NOIR, ROMCOM, romcom_90s, comedy_70s, SCIFI)}
    shown = ["c", "r2", "n", "r", "s"]  # narrative order: most recent first
    interests = [Interest(name="romantic comedy"), Interest(name="knitting"), Interest(name="Alien rewatches")]
    tags = [Tag(text="1990s romantic comedy", interest="romantic comedy")]
    got = attribute_evidence(interests, tags, shown, items, tag_attributes, item_attributes, n=2)
    # The two 90s romcoms share comedy, romance and the decade; the 70s comedy shares one attribute only.
    assert got[0].evidence == ("r2", "r")
    assert got[1].evidence == ()  # an interest no shown item supports keeps none
    assert got[2].evidence == ("s",)  # naming a title grounds it too
    assert attribute_evidence(interests, tags, shown, items, tag_attributes, item_attributes, n=0)[0].evidence == ()
