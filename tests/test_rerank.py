from __future__ import annotations

from datetime import datetime, timezone

import pytest

from llmrec.config import RerankConfig
from llmrec.llm import FakeBackend
from llmrec.rerank import clip_narrative, describe_item, rank_messages, rerank, score_candidates
from llmrec.schema import Interest, InterestProfile, Item, Narrative

ITEMS = [
    Item(item_id="1", title="Toy Story (1995)", genres=("Animation", "Children's", "Comedy"), year=1995),
    Item(item_id="2", title="GoldenEye (1995)", genres=("Action", "Thriller"), year=1995),
    Item(item_id="3", title="Four Rooms (1995)", genres=("Thriller",), year=1995),
]


def narrative(user_id: str, text: str = "liked | Star Wars (1977; Action, Sci-Fi)") -> Narrative:
    return Narrative(user_id=user_id, text=text, as_of=datetime(1998, 1, 1, tzinfo=timezone.utc),
                     n_events_in=1, n_items_out=1, n_tokens=8, max_tokens=64)


class PrefersBackend(FakeBackend):
    """Says Yes to prompts naming `liked` and No to the rest; records batch sizes."""

    def __init__(self, liked: str):
        super().__init__()
        self.liked, self.batches = liked, []

    def score_choices(self, prompts, choices, *, adapter=None):
        assert list(choices) == ["Yes", "No"]
        self.batches.append(len(prompts))
        return [[-0.1, -2.5] if self.liked in m[1]["content"] else [-3.0, -0.2] for m in prompts]


def test_rerank_puts_the_preferred_item_first_with_log_odds():
    backend = PrefersBackend("GoldenEye")
    ranked = rerank([narrative("u1"), narrative("u2")], [ITEMS, ITEMS[::-1]], backend, k=2)
    assert [it.item_id for it, _ in ranked[0]] == ["2", "1"]  # tie between 1 and 3 keeps input order
    assert [it.item_id for it, _ in ranked[1]] == ["2", "3"]
    assert ranked[0][0][1] == pytest.approx(2.4) and ranked[0][1][1] == pytest.approx(-2.8)
    assert backend.batches == [6]  # all pairs of all users in one batch


def test_batch_size_and_profile_interests_reach_the_prompts():
    backend = PrefersBackend("space opera")
    profile = InterestProfile(user_id="u1", interests=(Interest(name="space opera"), Interest(name="noir")))
    cfg = RerankConfig(batch_size=2, max_interests=1)
    scores = score_candidates([narrative("u1"), narrative("u2")], [ITEMS, ITEMS], backend, cfg, {"u1": profile})
    assert backend.batches == [2, 2, 2]
    assert scores[0] == [pytest.approx(2.4)] * 3 and scores[1] == [pytest.approx(-2.8)] * 3
    content = rank_messages("N", ITEMS[0], ["space opera", "noir"], cfg)[1]["content"]
    assert "space opera" in content and "noir" not in content


def test_prompt_shows_candidate_and_clipped_narrative():
    assert describe_item(ITEMS[0]) == "Toy Story (1995; Animation, Children's, Comedy)"
    text = "\n".join(f"line {i} " + "x" * 40 for i in range(100))
    clipped = clip_narrative(text, RerankConfig(max_narrative_chars=200).max_narrative_chars)
    assert len(clipped) <= 200 and clipped.startswith("line 0") and "\n" in clipped
    content = rank_messages(text, ITEMS[1], [], RerankConfig(max_narrative_chars=200))[1]["content"]
    assert "GoldenEye (1995; Action, Thriller)" in content and "line 10 " not in content


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="k must be"):
        rerank([narrative("u1")], [ITEMS], FakeBackend(), k=0)
    with pytest.raises(ValueError, match="candidate lists"):
        score_candidates([narrative("u1")], [ITEMS, ITEMS], FakeBackend())
