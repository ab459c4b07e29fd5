from __future__ import annotations

import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from llmrec.errors import AdapterError, ModelError
from llmrec.llm import FakeBackend, LLMBackend
from llmrec.llm.langchain import ChatModelBackend, LLMBackendChatModel, to_langchain_messages, to_llmrec_messages
from llmrec.llm.structured import GenerationSettings, generate_validated, repair_unconstrained


class Pick(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str = Field(min_length=1, max_length=40)
    year: int = Field(ge=1900, le=2030)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer with JSON only."}, {"role": "user", "content": text}]


def echo(messages, schema):
    return json.dumps({"title": messages[-1]["content"][:40], "year": 1995}) if schema else "plain " + messages[-1]["content"]


def test_messages_convert_both_ways():
    lc = to_langchain_messages(chat("hi") + [{"role": "assistant", "content": "yo"}])
    assert [type(m) for m in lc] == [SystemMessage, HumanMessage, AIMessage]
    assert to_llmrec_messages(lc) == chat("hi") + [{"role": "assistant", "content": "yo"}]
    with pytest.raises(ModelError, match="role 'tool'"):
        to_langchain_messages([{"role": "tool", "content": "x"}])


def test_backend_as_chat_model_invokes_with_its_knobs_and_token_usage():
    backend = FakeBackend(echo)
    model = LLMBackendChatModel(backend=backend, max_tokens=33, temperature=0.2, frequency_penalty=0.5, adapter="a")
    answer = model.invoke("Alien")
    assert answer.content == "plain Alien" and answer.usage_metadata["output_tokens"] == 2
    assert backend.calls == [{"n": 1, "json_schema": False, "adapter": "a", "frequency_penalty": 0.5}]
    with pytest.raises(ModelError, match="unknown generation argument"):
        model.invoke("x", top_k=3)


def test_batch_is_one_backend_call_for_the_whole_batch():
    backend = FakeBackend(echo)
    answers = LLMBackendChatModel(backend=backend).batch(["a", "b", [("system", "s"), ("human", "c")]])
    assert [a.content for a in answers] == ["plain a", "plain b", "plain c"]
    assert [c["n"] for c in backend.calls] == [3]


def test_structured_output_passes_the_schema_and_parses_the_model():
    backend = FakeBackend(echo)
    structured = LLMBackendChatModel(backend=backend).with_structured_output(Pick)
    picks = structured.batch(["Heat", "Fargo"])
    assert picks == [Pick(title="Heat", year=1995), Pick(title="Fargo", year=1995)]
    assert [(c["n"], c["json_schema"]) for c in backend.calls] == [(2, True)]
    as_dict = LLMBackendChatModel(backend=backend).with_structured_output(Pick.model_json_schema())
    assert as_dict.invoke("Babe") == {"title": "Babe", "year": 1995}
    seen = []
    LLMBackendChatModel(backend=FakeBackend(lambda m, s: seen.append(s) or "{}")).invoke("x", json_schema={"type": "object"})
    assert seen == [{"type": "object"}]


def test_chat_model_as_backend_generates_and_is_counted_as_unconstrained():
    model = FakeListChatModel(responses=["first", "second"])
    backend = ChatModelBackend(model, max_concurrency=1)
    assert isinstance(backend, LLMBackend) and not backend.enforces_schema
    gens = backend.generate([chat("a"), chat("b")], json_schema={"type": "object"})
    assert [g.text for g in gens] == ["first", "second"] and gens[0].finish_reason == "stop"
    with pytest.raises(AdapterError, match="adapter"):
        backend.generate([chat("a")], adapter="lora")
    with pytest.raises(ModelError, match="log-probabilities"):
        backend.score_choices([chat("a")], ["A", "B"])


def test_generate_validated_parses_and_retries_a_chat_model_without_schema_decoding():
    # A remote chat model: prose around the JSON (repaired), then an invalid answer that is retried.
    answers = iter([AIMessage(content='Sure! {"title": "Heat", "year": 1995}'), AIMessage(content="no idea"),
                    AIMessage(content='{"title": "Fargo", "year": 1996}')])
    backend = ChatModelBackend(GenericFakeChatModel(messages=answers), max_concurrency=1)
    out, stats = generate_validated(backend, [chat("a"), chat("b")], schema=Pick, check=None, fallback=lambda i: None,
                                    config=GenerationSettings(max_tokens=64), repair=repair_unconstrained)
    assert [r.value for r in out] == [Pick(title="Heat", year=1995), Pick(title="Fargo", year=1996)]
    assert out[0].repaired and out[1].attempt == 1
    assert not stats.enforces_schema and (stats.valid_first, stats.valid_final, stats.parse_failures) == (1, 2, 1)


def test_adapters_compose_round_trip():
    inner = FakeBackend(echo)
    backend = ChatModelBackend(LLMBackendChatModel(backend=inner), sampling_kwargs=True)
    gens = backend.generate([chat("x"), chat("y")], max_tokens=12, temperature=0.4)
    assert [g.text for g in gens] == ["plain x", "plain y"] and gens[0].n_output_tokens == 2
    assert backend.name == "langchain:llmrec-fake"


@pytest.mark.slow
def test_real_smollm2_as_chat_model_batches_in_one_call(model_dir):
    """The real packaged model behind LLMBackendChatModel: a batch is one backend.generate call."""
    from llmrec.config import LLMConfig
    from llmrec.llm import TransformersBackend

    backend = TransformersBackend(LLMConfig(model=str(model_dir), backend="transformers", batch_size=2))
    calls = []
    generate = backend.generate
    backend.generate = lambda prompts, **kw: calls.append(len(prompts)) or generate(prompts, **kw)
    try:
        answers = LLMBackendChatModel(backend=backend, max_tokens=16).batch(["Name a movie.", "Name a fruit."])
        assert calls == [2] and all(isinstance(a, AIMessage) and a.content.strip() for a in answers)
        assert all(a.usage_metadata["output_tokens"] > 0 for a in answers)
    finally:
        backend.close()


@pytest.mark.slow
def test_real_smollm2_through_chat_model_backend_gives_schema_valid_or_flagged_output(model_dir):
    """Real SmolLM2 wrapped as a langchain chat model and back: generate_validated returns schema-valid picks
    or flagged fallbacks, one batched call per try, counted as unconstrained."""
    from llmrec.config import LLMConfig
    from llmrec.llm import TransformersBackend

    real = TransformersBackend(LLMConfig(model=str(model_dir), backend="transformers", batch_size=2))
    calls = []
    generate = real.generate
    real.generate = lambda prompts, **kw: calls.append(len(prompts)) or generate(prompts, **kw)
    backend = ChatModelBackend(LLMBackendChatModel(backend=real))
    prompts = [chat('Name one movie from the 1990s as JSON: {"title": "...", "year": 1995}') for _ in range(2)]
    try:
        out, stats = generate_validated(backend, prompts, schema=Pick, check=None, fallback=lambda i: None,
                                        config=GenerationSettings(max_tokens=40, retry_temperature=0.7),
                                        repair=repair_unconstrained)
    finally:
        real.close()
    assert calls[0] == 2 and len(calls) <= 2 and stats.calls == len(calls)
    assert not stats.enforces_schema and stats.valid_final + stats.fallbacks == 2
    for r in out:
        assert r.fallback or isinstance(r.value, Pick)
