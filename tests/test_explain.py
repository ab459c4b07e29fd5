"""Explanations from facts: prompt, batching, check, regeneration, template, table, job."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from pydantic import ValidationError

from explain.check import check_explanation
from explain.explain import (
    ExplainStats,
    explain_items,
    explain_messages,
    explain_wire,
    facts_from_key,
    make_explain_process,
    pair_key,
    template_explanation,
)
from explain.facts import ExplainFacts, build_facts
from explain.table import ExplanationTable, explanations_from_frame
from llmrec.config import ExplainConfig, JobConfig
from llmrec.errors import DataError
from llmrec.jobs import read_shards, run_sharded, sum_shard_stats
from llmrec.llm import FakeBackend
from llmrec.schema import Domain, Explanation, Item

MOVIE = Domain(item="movie", items="movies", user="viewer")
TOY = Item(item_id="1", title="Toy Story", genres=("Animation", "Children's", "Comedy"), year=1995)
ALIEN = Item(item_id="2", title="Alien", genres=("Action", "Horror", "Sci-Fi", "Thriller"), year=1979)
CASA = Item(item_id="3", title="Casablanca", genres=("Drama", "Romance", "War"), year=1942)
ALIENS = Item(item_id="4", title="Aliens", genres=("Action", "Sci-Fi", "Thriller", "War"), year=1986)
LION = Item(item_id="5", title="Lion King, The", genres=("Animation", "Children's", "Musical"), year=1994,
            text="A lion cub flees his kingdom and must return to claim it.", brand="Disney")
ITEMS = {i.item_id: i for i in (TOY, ALIEN, CASA, ALIENS, LION)}


def F(item, interest=None, evidence=()):
    return ExplainFacts(item=item, interest=interest, evidence=tuple(evidence), domain=MOVIE)


def _title(messages) -> str:
    return re.search(r"^Movie: (.*?)( \(\d{4}\))?;", messages[-1]["content"], re.MULTILINE).group(1)


class RecordingBackend(FakeBackend):
    """FakeBackend that also records temperature and max_tokens of each call."""

    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None, **kw):
        out = super().generate(prompts, json_schema=json_schema, max_tokens=max_tokens, temperature=temperature,
                               adapter=adapter, **kw)
        self.calls[-1].update(temperature=temperature, max_tokens=max_tokens, schema=json_schema)
        return out


def good(messages, schema):
    return json.dumps({"e": f"{_title(messages)} is a fine pick for your next evening."})


def test_prompt_holds_exactly_the_facts():
    user = explain_messages(F(LION, "1990s animation", [TOY]), ExplainConfig(max_genres=2))[-1]["content"]
    assert "Movie: The Lion King (1994); Animation, Children's; by Disney" in user
    assert "Musical" not in user  # max_genres
    assert "About: A lion cub flees" in user and "The viewer liked: Toy Story (1995)" in user
    assert "Their interest: 1990s animation" in user and "Shared: animation, children's, 1990s" in user
    mib = Item(item_id="9", title="Men in Black", genres=("Action", "Adventure", "Comedy", "Sci-Fi"), year=1997)
    sci = explain_messages(F(mib, evidence=[ALIENS]), ExplainConfig(max_genres=2))[-1]["content"]
    assert "Movie: Men in Black (1997); Action, Sci-Fi" in sci  # shared genres survive max_genres
    bare = explain_messages(F(CASA), ExplainConfig())[-1]["content"]
    assert "liked" not in bare and "interest" not in bare and "Shared: none" in bare
    system = explain_messages(ExplainFacts(item=CASA), ExplainConfig())[0]["content"]
    assert "item recommendations to a user" in system  # generic domain nouns, no "movie"


def test_grounded_answers_are_kept_and_batched():
    facts = [F(TOY, "animated films"), F(ALIEN, evidence=[ALIENS]), F(CASA), F(ALIEN, evidence=[ALIENS])]
    backend = RecordingBackend(good)
    out, stats = explain_items(facts, backend, ExplainConfig(batch_size=2, max_tokens=40))
    assert [(e.interest, e.item_id, e.evidence) for e in out] == [("animated films", "1", ()), ("", "2", ("4",)),
                                                                   ("", "3", ())]
    assert all(e.faithful and not e.flagged for e in out) and out[0].text.startswith("Toy Story")
    assert [c["n"] for c in backend.calls] == [2, 1]  # 3 distinct facts, batch_size 2
    assert all(c["max_tokens"] == 40 and c["temperature"] == 0.0 for c in backend.calls)
    assert stats.faithful_share == 1.0 and stats.templated == 0 and stats.regenerated == 0


def test_ungrounded_answers_are_regenerated_then_templated():
    def bad(messages, schema):
        return json.dumps({"e": f"{_title(messages)} is a gripping western from 1950 starring John Wayne."})

    backend = RecordingBackend(bad)
    out, stats = explain_items([F(TOY, "animated films"), F(ALIEN, evidence=[ALIENS])], backend,
                               ExplainConfig(retry_temperature=0.9, max_genres=2))
    assert [c["temperature"] for c in backend.calls] == [0.0, 0.9]  # first try, then one regeneration
    assert all(e.flagged and e.faithful for e in out) and stats.templated == 2 and stats.regenerated == 2
    assert out[0].text == "Toy Story (1995) is an animation and children's movie, matching your interest in animated films."
    assert out[1].text == "You liked Aliens (1986); Alien (1979) is also action and sci-fi." and out[1].evidence == ("4",)
    assert stats.unfaithful == 4 and stats.faithful_share == 0.0 and "1950" in stats.examples[0]


def test_regeneration_can_rescue_and_retries_zero_goes_straight_to_template():
    seen: dict[str, int] = {}

    def flaky(messages, schema):
        key = messages[-1]["content"]
        seen[key] = seen.get(key, 0) + 1
        return "not json {" if seen[key] == 1 else good(messages, schema)

    out, stats = explain_items([F(ALIEN)], FakeBackend(flaky), ExplainConfig())
    assert not out[0].flagged and stats.invalid == 1 and stats.regenerated == 1 and stats.llm_final == 1
    assert stats.faithful_first == 0 and "parse" in stats.examples[0]
    echo, _ = explain_items([F(ALIEN)], FakeBackend(lambda m, s: '{"e": "sentence"}'), ExplainConfig())
    assert echo[0].flagged  # the format's placeholder echoed back is no explanation
    wrapped, _ = explain_items([F(ALIEN)], FakeBackend(lambda m, s: "Answer: " + good(m, s)), ExplainConfig())
    assert not wrapped[0].flagged  # prose around the JSON is cut
    backend = RecordingBackend(lambda m, s: "not json {")
    out, stats = explain_items([F(ALIEN)], backend, ExplainConfig(retries=0))
    assert len(backend.calls) == 1 and out[0].flagged and stats.regenerated == 0


def test_config_fields_shape_schema_check_and_evidence():
    with pytest.raises(ValidationError, match="max_chars"):
        ExplainConfig(max_chars=5)
    with pytest.raises(ValidationError, match="max_evidence"):
        ExplainConfig(max_evidence=4)
    assert explain_wire(60).model_json_schema()["properties"]["e"]["maxLength"] == 60
    with pytest.raises(ValidationError):
        explain_wire(20).model_validate_json(json.dumps({"e": "x" * 21}))
    long = json.dumps({"e": "Alien is a fine pick for your next evening at home."})
    out, _ = explain_items([F(ALIEN)], FakeBackend(lambda m, s: long), ExplainConfig(max_chars=40, retries=0))
    assert out[0].flagged  # max_chars bounds the answer
    history = [ALIENS, CASA, TOY]
    assert build_facts(ALIEN, None, history, ExplainConfig(max_evidence=1).max_evidence).evidence == (ALIENS,)
    assert build_facts(ALIEN, None, history, ExplainConfig(max_evidence=0).max_evidence).evidence == ()


def test_table_round_trip_lookup_and_coverage(tmp_path):
    out, stats = explain_items([F(ALIEN, "Space  Horror"), F(TOY, evidence=[LION])], FakeBackend(good), ExplainConfig())
    table = ExplanationTable(out + [template_explanation(F(CASA), ExplainConfig())])
    table.save(tmp_path / "expl", config=ExplainConfig(), manifest={"stats": stats.to_dict()})
    loaded = ExplanationTable.load(tmp_path / "expl")
    assert len(loaded) == 3 and loaded.get("space horror", "2") == out[0]
    assert loaded.lookup(F(TOY, evidence=[LION])) == out[1]
    assert loaded.lookup(F(TOY)) is None  # other evidence, other facts: no row
    assert loaded.get(None, "3").flagged
    assert loaded.coverage([F(ALIEN, "space horror"), F(ALIEN)]) == 0.5
    manifest = json.loads((tmp_path / "expl" / "manifest.json").read_text())
    assert manifest["n_flagged"] == 1 and len(manifest["prompt_hashes"]["explain"]) == 64
    assert ExplainConfig.from_json(tmp_path / "expl" / "config.json") == ExplainConfig()


def test_table_rows_are_validated_and_old_tables_read_as_no_evidence():
    old = pd.DataFrame([{"interest": "x", "item_id": "1", "text": "t", "faithful": True, "flagged": False}])
    assert explanations_from_frame(old, "old.parquet") == [Explanation(interest="x", item_id="1", text="t",
                                                                        faithful=True)]
    with pytest.raises(DataError, match="bad.parquet: missing columns"):
        explanations_from_frame(old.drop(columns=["text"]), "bad.parquet")


def test_explanations_as_a_resumable_job(tmp_path):
    facts = [F(ALIEN, evidence=[ALIENS]), F(TOY, "animated films"), F(CASA), F(LION, evidence=[TOY]), F(ALIENS),
             F(TOY, evidence=[LION])]
    keys = [pair_key(f) for f in facts]
    assert facts_from_key(keys[0], ITEMS, MOVIE) == facts[0]
    with pytest.raises(KeyError, match="not in the catalogue"):
        facts_from_key(pair_key(F(Item(item_id="zz", title="Z"))), ITEMS, MOVIE)
    process = make_explain_process(ITEMS, FakeBackend(good), ExplainConfig(), MOVIE)
    res = run_sharded(keys, process, tmp_path, JobConfig(shard_size=4, key_column="pair_key", progress=False))
    frame = read_shards(tmp_path)
    assert res.n_rows == 6 and sorted(frame["pair_key"]) == sorted(keys)
    table = ExplanationTable.load(tmp_path / "shard-00000.parquet")  # a shard loads like a table
    assert len(table) == 4 and table.lookup(facts[0]) is not None
    stats = sum_shard_stats(frame, ExplainStats, keep=5)  # one JSON per shard
    assert stats.n_pairs == 6 and stats.llm_final + stats.templated == 6


@pytest.mark.slow
def test_real_smollm2_explanations_are_grounded_or_flagged(model_dir, tiny):
    """The real packaged model (transformers backend, no decoding constraint): whatever it writes, every
    explanation is either the model's and passes the closed-world check, or the flagged template."""
    from llmrec.config import LLMConfig
    from llmrec.llm import TransformersBackend

    backend = TransformersBackend(LLMConfig(model=str(model_dir), backend="transformers", batch_size=4))
    items = tiny.item_index
    facts = [build_facts(items["69"], "1990s comedies", [items["1"], items["88"]], 2, MOVIE),
             build_facts(items["98"], "dark crime thrillers", [items["50"], items["100"]], 2, MOVIE)]
    cfg = ExplainConfig(max_tokens=40, batch_size=4)
    out, stats = explain_items(facts, backend, cfg)
    assert [e.item_id for e in out] == ["69", "98"] and stats.n_output_tokens > 0
    assert stats.llm_final + stats.templated == 2
    for f, e in zip(facts, out):
        if e.flagged:
            assert e == template_explanation(f, cfg)
        else:
            assert check_explanation(e.text, f, max_chars=cfg.max_chars) is None
