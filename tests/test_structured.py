from __future__ import annotations

import json
from typing import Annotated

import pytest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from llmrec.errors import ModelError
from llmrec.llm import FakeBackend, Generation
from llmrec.llm.structured import (
    GenerationSettings,
    GenerationStats,
    enforces_schema,
    extract_json_object,
    generate_validated,
    repair_truncated,
    repair_unconstrained,
    salvage_truncated,
    without_max_lengths,
)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    w: list[str] = Field(min_length=1, max_length=3)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Scripted:
    """A backend answering from a per-(prompt, call) script; records every call's prompts and knobs."""

    name = "scripted"

    def __init__(self, script, finish_reason="stop", enforces=False):
        self.script, self.finish_reason, self.enforces_schema = script, finish_reason, enforces
        self.calls: list[dict] = []

    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None,
                 frequency_penalty=0.0):
        n = len(self.calls)
        self.calls.append(dict(prompts=[p[0]["content"] for p in prompts], schema=json_schema, max_tokens=max_tokens,
                               temperature=temperature, adapter=adapter, frequency_penalty=frequency_penalty))
        return [Generation(text=self.script(p[0]["content"], n), n_prompt_tokens=3, n_output_tokens=5,
                           finish_reason=self.finish_reason) for p in prompts]


SETTINGS = GenerationSettings(max_tokens=50, temperature=0.0, retry_temperature=0.9, frequency_penalty=0.4,
                              adapter="lora-x")


def test_all_valid_in_one_call_with_the_wire_schema_and_every_knob():
    backend = Scripted(lambda p, n: json.dumps({"w": [p]}), enforces=True)
    out, stats = generate_validated(backend, [chat(f"p{i}") for i in range(5)], schema=Answer, check=None,
                                    fallback=lambda i: None, config=SETTINGS)
    assert [r.value.w for r in out] == [[f"p{i}"] for i in range(5)] and not any(r.fallback for r in out)
    assert len(backend.calls) == 1 and backend.calls[0]["schema"] == Answer.model_json_schema()
    call = backend.calls[0]
    assert (call["max_tokens"], call["temperature"], call["adapter"], call["frequency_penalty"]) == (50, 0.0, "lora-x", 0.4)
    assert (stats.prompts, stats.valid_first, stats.valid_final, stats.fallbacks, stats.calls) == (5, 5, 5, 0, 1)
    assert (stats.prompt_tokens, stats.output_tokens, stats.answers) == (15, 25, 5) and stats.enforces_schema


def test_only_failures_are_retried_in_one_batch_at_the_retry_temperature():
    # p1 is invalid JSON at first, p2 fails the semantic check at first; both are fine on the retry
    def script(p, n):
        if n == 0 and p == "p1":
            return "not json"
        if n == 0 and p == "p2":
            return json.dumps({"w": ["<placeholder>"]})
        return json.dumps({"w": [p]})

    backend = Scripted(script)
    check = lambda obj, i: "placeholder" if obj.w[0].startswith("<") else None
    out, stats = generate_validated(backend, [chat(f"p{i}") for i in range(4)], schema=Answer, check=check,
                                    fallback=lambda i: None, config=SETTINGS)
    assert [c["prompts"] for c in backend.calls] == [["p0", "p1", "p2", "p3"], ["p1", "p2"]]
    assert [c["temperature"] for c in backend.calls] == [0.0, 0.9]
    assert [r.attempt for r in out] == [0, 1, 1, 0] and [r.value.w[0] for r in out] == ["p0", "p1", "p2", "p3"]
    assert (stats.valid_first, stats.valid_final, stats.valid_retry, stats.fallbacks) == (2, 4, 2, 0)
    assert (stats.parse_failures, stats.semantic_failures, stats.answers) == (1, 1, 6)
    assert [(e["index"], e["kind"]) for e in stats.examples] == [(1, "parse"), (2, "semantic")]
    assert stats.examples[0]["raw"] == "not json" and stats.examples[1]["reason"] == "placeholder"
    assert not stats.enforces_schema


def test_failing_twice_gives_the_flagged_fallback_with_the_last_raw_text():
    backend = Scripted(lambda p, n: f"bad {n}" if p == "p1" else json.dumps({"w": ["ok"]}))
    out, stats = generate_validated(backend, [chat("p0"), chat("p1")], schema=Answer, check=None,
                                    fallback=lambda i: f"fallback {i}", config=SETTINGS)
    assert out[1].fallback and out[1].value == "fallback 1" and out[1].text == "bad 1" and out[1].attempt == 2
    assert not out[0].fallback and stats.fallbacks == 1 and stats.parse_failures == 2


@pytest.mark.parametrize("retries", [0, 2])
def test_retries_setting_bounds_the_calls(retries):
    backend = Scripted(lambda p, n: "never valid")
    out, stats = generate_validated(backend, [chat("p")], schema=Answer, check=None, fallback=lambda i: i,
                                    config=SETTINGS.model_copy(update={"retries": retries}))
    assert len(backend.calls) == retries + 1 and stats.fallbacks == 1 and out[0].fallback
    assert [c["temperature"] for c in backend.calls] == [0.0] + [0.9] * retries


def test_batch_size_splits_calls_and_none_sends_everything_at_once():
    backend = Scripted(lambda p, n: json.dumps({"w": [p]}))
    prompts = [chat(f"p{i}") for i in range(5)]
    generate_validated(backend, prompts, schema=Answer, check=None, fallback=lambda i: None,
                       config=SETTINGS.model_copy(update={"batch_size": 2}))
    assert [len(c["prompts"]) for c in backend.calls] == [2, 2, 1]


def test_truncated_answer_is_repaired_and_counted():
    cut = '{"w":["a","b","c"'  # not the {"k":[{...}] shape: salvage cannot close it

    class Nested(BaseModel):
        model_config = ConfigDict(extra="forbid")
        x: list[dict[str, int]]

    backend = Scripted(lambda p, n: '{"x":[{"y":1},{"y":2},{"y"', finish_reason="length")
    out, stats = generate_validated(backend, [chat("p")], schema=Nested, check=None, fallback=lambda i: None,
                                    config=SETTINGS, repair=repair_truncated)
    assert out[0].value.x == [{"y": 1}, {"y": 2}] and out[0].repaired and stats.repaired == 1
    assert salvage_truncated(cut) is None
    # without the repair step the same answer is a parse failure
    _, plain = generate_validated(backend, [chat("p")], schema=Nested, check=None, fallback=lambda i: None,
                                  config=SETTINGS.model_copy(update={"retries": 0}))
    assert plain.fallbacks == 1 and plain.repaired == 0


def test_repair_only_applies_to_length_cuts_and_prose():
    assert repair_truncated('{"m":[{"t":"a"},{"t"', "stop") == []
    assert repair_truncated('{"m":[{"t":"a"},{"t"', "length") == ['{"m":[{"t":"a"}]}']
    assert extract_json_object('Sure! {"w":["a"]} Hope it helps.') == '{"w":["a"]}'
    assert extract_json_object("no json") is None
    assert repair_unconstrained('Here: {"m":[{"t":"a"},{"t"', "length") == ['{"m":[{"t":"a"}', '{"m":[{"t":"a"}]}']


def test_backend_returning_the_wrong_count_is_an_error():
    class Short(Scripted):
        def generate(self, prompts, **kw):
            return super().generate(prompts, **kw)[:-1]

    with pytest.raises(ModelError, match="1 generations for 2 prompts"):
        generate_validated(Short(lambda p, n: "{}"), [chat("a"), chat("b")], schema=Answer, check=None,
                           fallback=lambda i: None, config=SETTINGS)


def test_fake_backend_default_answer_is_valid_and_counted_as_enforcing():
    out, stats = generate_validated(FakeBackend(), [chat("a")], schema=Answer, check=None, fallback=lambda i: None,
                                    config=SETTINGS)
    assert not out[0].fallback and stats.enforces_schema and enforces_schema(FakeBackend())
    assert not enforces_schema(object())  # a backend that does not say so is treated as unconstrained


def test_stats_merge_sums_counts_and_keeps_enforcement_only_if_both():
    a = GenerationStats(prompts=2, valid_first=1, valid_final=2, answers=3, enforces_schema=True,
                        examples=[{"index": 0}])
    b = GenerationStats(prompts=1, fallbacks=1, answers=2, parse_failures=2, enforces_schema=False)
    m = a.merge(b)
    assert (m.prompts, m.valid_final, m.fallbacks, m.answers, m.parse_failures) == (3, 2, 1, 5, 2)
    assert not m.enforces_schema and m.examples == [{"index": 0}]
    d = m.to_dict()
    assert d["valid_retry"] == 1 and d["json_valid_rate"] == 0.4


def test_settings_are_frozen_and_reject_unknown_keys():
    with pytest.raises(ValidationError):
        GenerationSettings(max_tokens=10, temprature=0.5)
    with pytest.raises(ValidationError):
        GenerationSettings(max_tokens=10, retry_temperature=3.0)
    with pytest.raises(ValidationError):
        SETTINGS.max_tokens = 3  # type: ignore[misc]


class Bounded(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    w: list[Annotated[str, StringConstraints(min_length=1, max_length=4)]] = Field(min_length=1, max_length=2)


def test_max_lengths_can_be_left_to_validation_instead_of_the_decoding_grammar():
    schema = Bounded.model_json_schema()
    loose = without_max_lengths(schema)
    assert "maxLength" in json.dumps(schema) and "maxLength" not in json.dumps(loose)
    assert '"minLength": 1' in json.dumps(loose)  # kept: without it the model pads with empty strings
    assert loose["properties"]["w"]["maxItems"] == 2  # array bounds stay: they keep answers short
    assert without_max_lengths({"properties": {"maxLength": {"type": "integer"}}}) == {
        "properties": {"maxLength": {"type": "integer"}}}  # a property that happens to carry the name stays
    backend = Scripted(lambda p, n: json.dumps({"w": ["toolong" if n == 0 else "ok"]}), enforces=True)
    settings = GenerationSettings(max_tokens=20, decode_max_lengths=False)
    out, stats = generate_validated(backend, [chat("p")], schema=Bounded, check=None, fallback=lambda i: None,
                                    config=settings)
    assert backend.calls[0]["schema"] == loose and out[0].value.w == ["ok"]  # still validated after decoding
    assert (stats.parse_failures, stats.valid_first, stats.valid_final) == (1, 0, 1)
