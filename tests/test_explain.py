"""Explanations per (interest, item) pair: batching, faithfulness, regeneration, template, table, job."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from explain.explain import (
    ExplainStats,
    ExplanationTable,
    check_faithful,
    explain_messages,
    explain_pairs,
    explain_wire,
    make_explain_process,
    pair_key,
    template_explanation,
)
from llmrec.config import ExplainConfig, JobConfig
from llmrec.jobs import read_shards, run_sharded, sum_shard_stats
from llmrec.llm import FakeBackend
from llmrec.schema import Item

TOY = Item(item_id="1", title="Toy Story", genres=("Animation", "Children's", "Comedy"), year=1995)
ALIEN = Item(item_id="2", title="Alien", genres=("Action", "Horror", "Sci-Fi", "Thriller"), year=1979)
CASA = Item(item_id="3", title="Casablanca", genres=("Drama", "Romance", "War"), year=1942)


def _fields(messages) -> tuple[str, str]:
    user = messages[-1]["content"]
    return re.search(r"Viewer interest: (.*)", user).group(1), re.search(r"Movie: (.*?)( \(\d{4}\))?$", user, re.M).group(1)


class RecordingBackend(FakeBackend):
    """FakeBackend that also records temperature and max_tokens of each call."""

    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None):
        out = super().generate(prompts, json_schema=json_schema, max_tokens=max_tokens, temperature=temperature, adapter=adapter)
        self.calls[-1].update(temperature=temperature, max_tokens=max_tokens, schema=json_schema)
        return out


def good(messages, schema):
    interest, title = _fields(messages)
    return json.dumps({"e": f"Fans of {interest} will enjoy {title}."})


def test_faithful_answers_are_kept_and_batched():
    pairs = [("animated classics", TOY), ("space horror", ALIEN), ("wartime romance", CASA), ("space horror", ALIEN)]
    backend = RecordingBackend(good)
    cfg = ExplainConfig(batch_size=2, max_tokens=40)
    out, stats = explain_pairs(pairs, backend, cfg)
    assert [(e.interest, e.item_id) for e in out] == [("animated classics", "1"), ("space horror", "2"), ("wartime romance", "3")]
    assert all(e.faithful and not e.flagged for e in out) and "Toy Story" in out[0].text
    assert [c["n"] for c in backend.calls] == [2, 1]  # 3 distinct pairs, batch_size 2
    assert all(c["max_tokens"] == 40 and c["temperature"] == 0.0 for c in backend.calls)
    assert stats.faithful_share == 1.0 and stats.templated == 0 and stats.regenerated == 0


def test_unfaithful_answers_are_regenerated_once_then_templated():
    def bad(messages, schema):
        interest, title = _fields(messages)
        return json.dumps({"e": f"{title} is a gripping western from 1950."})

    backend = RecordingBackend(bad)
    cfg = ExplainConfig(retry_temperature=0.9, max_genres=2)
    out, stats = explain_pairs([("family films", TOY), ("space horror", ALIEN)], backend, cfg)
    assert [c["temperature"] for c in backend.calls] == [0.0, 0.9]  # first try, then one regeneration
    assert all(e.flagged for e in out) and stats.templated == 2 and stats.regenerated == 2
    assert out[0].text == "Because you like family films: Toy Story is a animation, children's film from 1995."
    assert stats.unfaithful == 4 and stats.faithful_share == 0.0 and "western" in stats.examples[0]


def test_regeneration_can_rescue_and_retries_zero_goes_straight_to_template():
    seen: dict[str, int] = {}

    def flaky(messages, schema):
        key = messages[-1]["content"]
        seen[key] = seen.get(key, 0) + 1
        return "not json {" if seen[key] == 1 else good(messages, schema)

    out, stats = explain_pairs([("space horror", ALIEN)], FakeBackend(flaky), ExplainConfig())
    assert not out[0].flagged and stats.invalid == 1 and stats.regenerated == 1 and stats.llm_final == 1
    assert stats.valid_first == 0
    echo, _ = explain_pairs([("space horror", ALIEN)], FakeBackend(lambda m, s: '{"e": "sentence"}'), ExplainConfig())
    assert echo[0].flagged  # the format's placeholder echoed back is no explanation
    wrapped, _ = explain_pairs([("space horror", ALIEN)], FakeBackend(lambda m, s: 'Answer: ' + good(m, s)), ExplainConfig())
    assert not wrapped[0].flagged  # prose around the JSON is cut
    backend = RecordingBackend(lambda m, s: "not json {")
    out, stats = explain_pairs([("space horror", ALIEN)], backend, ExplainConfig(retries=0))
    assert len(backend.calls) == 1 and out[0].flagged and stats.regenerated == 0


def test_check_faithful_rules():
    assert check_faithful("A 1979 sci-fi horror ride you'll love.", "space horror", ALIEN) is None
    assert "drama" in check_faithful("A moving drama.", "space horror", ALIEN)
    assert "1980" in check_faithful("A sci-fi hit from 1980.", "space horror", ALIEN)
    # Genre words inside the interest or the title are allowed; so is the verb "love".
    assert check_faithful("For your love of noir mysteries: Casablanca.", "noir mysteries", CASA) is None
    # The interest may be named, but its attributes may not be pinned on an item that lacks them.
    assert "comedy" in check_faithful("Alien, a sci-fi comedy, for your taste in space comedy.", "space comedy", ALIEN)
    assert check_faithful("Alien, a 1979 sci-fi horror, for your taste in space comedy.", "space comedy", ALIEN) is None
    assert "another interest" in check_faithful("Great for 90s comedies and cozy classics.", "90s comedies", TOY,
                                                 ["90s comedies", "cozy classics"])


def test_config_fields_shape_schema_prompt_and_template():
    with pytest.raises(ValidationError, match="max_chars"):
        ExplainConfig(max_chars=5)
    with pytest.raises(ValidationError, match="retries"):
        ExplainConfig(retries=7)
    assert explain_wire(60).model_json_schema()["properties"]["e"]["maxLength"] == 60
    with pytest.raises(ValidationError):
        explain_wire(20).model_validate_json(json.dumps({"e": "x" * 21}))
    assert "at most 10 words" in explain_messages("x", ALIEN, ExplainConfig(max_chars=60))[-1]["content"]
    assert "action, horror, sci-fi" in template_explanation("x", ALIEN, ExplainConfig(max_genres=3)).text
    assert "thriller" not in template_explanation("x", ALIEN, ExplainConfig(max_genres=3)).text


def test_table_round_trip_lookup_and_coverage(tmp_path):
    out, stats = explain_pairs([("Space  Horror", ALIEN), ("animated classics", TOY)], FakeBackend(good), ExplainConfig())
    table = ExplanationTable(out + [template_explanation("wartime romance", CASA, ExplainConfig())])
    table.save(tmp_path / "expl", config=ExplainConfig(), manifest={"stats": stats.to_dict()})
    loaded = ExplanationTable.load(tmp_path / "expl")
    assert len(loaded) == 3 and loaded.get("space horror", "2") == out[0]
    assert loaded.get("space horror", "1") is None and loaded.get("wartime romance", "3").flagged
    assert loaded.coverage([("space horror", "2"), ("space horror", "3")]) == 0.5
    manifest = json.loads((tmp_path / "expl" / "manifest.json").read_text())
    assert manifest["n_flagged"] == 1 and len(manifest["prompt_hashes"]["explain"]) == 64
    assert ExplainConfig.from_json(tmp_path / "expl" / "config.json") == ExplainConfig()


def test_explanations_as_a_resumable_job(tmp_path):
    items = {i.item_id: i for i in (TOY, ALIEN, CASA)}
    keys = [pair_key(i, it) for i in ("space horror", "animated classics") for it in items]
    process = make_explain_process(items, FakeBackend(good), ExplainConfig())
    res = run_sharded(keys, process, tmp_path, JobConfig(shard_size=4, key_column="pair_key", progress=False))
    frame = read_shards(tmp_path)
    assert res.n_rows == 6 and sorted(frame["pair_key"]) == sorted(keys)
    table = ExplanationTable.load(tmp_path / "shard-00000.parquet")  # a shard loads like a table
    assert len(table) == 4 and table.get("space horror", "1") is not None
    stats = sum_shard_stats(frame, ExplainStats, keep=5)  # one JSON per shard
    assert stats.n_pairs == 6 and stats.llm_final + stats.templated == 6


@pytest.mark.slow
def test_real_smollm2_explanations_are_validated_and_faithful_or_flagged(model_dir, tiny):
    """The real packaged model (transformers backend, no decoding constraint): whatever it writes, every
    pair ends with an explanation that is either the model's and passes the checks, or the flagged template."""
    from llmrec.config import LLMConfig
    from llmrec.llm import TransformersBackend

    backend = TransformersBackend(LLMConfig(model=str(model_dir), backend="transformers", batch_size=4))
    items = tiny.item_index
    pairs = [("1990s romantic comedies", items["69"]), ("dark crime thrillers", items["98"])]
    cfg = ExplainConfig(max_tokens=32, batch_size=4)
    out, stats = explain_pairs(pairs, backend, cfg)
    assert [(e.interest, e.item_id) for e in out] == [(i, it.item_id) for i, it in pairs]
    assert stats.llm_final + stats.templated == 2 and stats.n_output_tokens > 0
    for (interest, item), e in zip(pairs, out):
        if e.flagged:
            assert e == template_explanation(interest, item, cfg)
        else:
            assert check_faithful(e.text, interest, item, [p[0] for p in pairs]) is None and len(e.text.split()) >= 3
