"""Adapters between llmrec backends and langchain-core chat models, both ways.

- `LLMBackendChatModel(backend)`: an llmrec `LLMBackend` (vLLM engine, transformers, fake) as a langchain-core
  `BaseChatModel`. `invoke` is one prompt; `batch` sends the WHOLE batch to the engine as one
  `backend.generate` call (langchain's default batch runs one call per input on a thread pool, which would
  throw away vLLM's continuous batching); `with_structured_output(PydanticModel)` or a `json_schema` kwarg
  passes the schema to the backend, which constrains decoding where it can.
- `ChatModelBackend(chat_model)`: any langchain-core chat model (e.g. one pointed at a remote
  OpenAI-compatible server) as an llmrec `LLMBackend`. It cannot constrain decoding to a schema, so it says
  `enforces_schema = False`: `generate_validated` then relies on parse-and-retry and counts it.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import JsonOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import BaseModel, ConfigDict, Field

from llmrec.errors import AdapterError, ModelError
from llmrec.llm.base import Generation, Messages

log = logging.getLogger(__name__)

_ROLE_OF = {"system": "system", "human": "user", "ai": "assistant"}
_MESSAGE_OF = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}


def to_llmrec_messages(messages: Sequence[BaseMessage]) -> Messages:
    """langchain messages -> OpenAI-style chat; only system/human/ai turns with text content."""
    out = []
    for n, m in enumerate(messages):
        if m.type not in _ROLE_OF:
            raise ModelError(f"message {n} has type {m.type!r}; llmrec backends take {sorted(_ROLE_OF)} only")
        out.append({"role": _ROLE_OF[m.type], "content": message_text(m)})
    return out


def to_langchain_messages(messages: Messages) -> list[BaseMessage]:
    """OpenAI-style chat -> langchain messages."""
    out = []
    for n, m in enumerate(messages):
        if m.get("role") not in _MESSAGE_OF:
            raise ModelError(f"message {n} has role {m.get('role')!r}; expected one of {sorted(_MESSAGE_OF)}")
        out.append(_MESSAGE_OF[m["role"]](content=m["content"]))
    return out


def message_text(message: BaseMessage) -> str:
    """A message's text (content blocks joined: some chat models answer with a list of parts)."""
    if isinstance(message.content, str):
        return message.content
    return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in message.content)


class LLMBackendChatModel(BaseChatModel):
    """An llmrec backend as a langchain-core chat model; sampling knobs are fields, overridable per call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: Any  # an llmrec LLMBackend (not validated by pydantic: it is a protocol)
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=2.0)
    adapter: str | None = None
    json_schema: dict[str, Any] | None = None  # default schema for every call (usually set per call instead)

    @property
    def _llm_type(self) -> str:
        return f"llmrec-{getattr(self.backend, 'name', type(self.backend).__name__)}"

    def _backend_generate(self, prompts: list[Messages], kwargs: dict[str, Any]) -> list[Generation]:
        unknown = set(kwargs) - {"json_schema", "max_tokens", "temperature", "frequency_penalty", "adapter", "stop"}
        if unknown:
            raise ModelError(f"LLMBackendChatModel: unknown generation argument(s) {sorted(unknown)}")
        if kwargs.get("stop"):
            raise ModelError("LLMBackendChatModel: stop sequences are not supported by llmrec backends")
        return self.backend.generate(
            prompts, json_schema=kwargs.get("json_schema", self.json_schema),
            max_tokens=kwargs.get("max_tokens", self.max_tokens), temperature=kwargs.get("temperature", self.temperature),
            adapter=kwargs.get("adapter", self.adapter),
            frequency_penalty=kwargs.get("frequency_penalty", self.frequency_penalty))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        (gen,) = self._backend_generate([to_llmrec_messages(messages)], {**kwargs, "stop": stop})
        return ChatResult(generations=[ChatGeneration(message=_ai_message(gen))])

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
              **kwargs: Any) -> list[BaseMessage]:
        """All inputs in ONE backend.generate call (callbacks per input are not run on this path)."""
        if not inputs:
            return []
        prompts = [to_llmrec_messages(self._convert_input(x).to_messages()) for x in inputs]
        return [_ai_message(g) for g in self._backend_generate(prompts, kwargs)]

    def with_structured_output(self, schema: dict[str, Any] | type, *, include_raw: bool = False,
                               **kwargs: Any) -> Runnable:
        """The schema constrains the backend's decoding; answers parse into the pydantic model (or a dict)."""
        if kwargs or include_raw:
            raise ModelError(f"with_structured_output: include_raw and {sorted(kwargs)} are not supported")
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            parse = lambda m: schema.model_validate_json(message_text(m))  # noqa: E731
            wire = schema.model_json_schema()
        elif isinstance(schema, dict):
            parse, wire = JsonOutputParser().invoke, schema
        else:
            raise ModelError(f"with_structured_output needs a pydantic model class or a JSON schema dict, got {schema!r}")
        return self.bind(json_schema=wire) | RunnableLambda(parse)


def _ai_message(gen: Generation) -> AIMessage:
    return AIMessage(content=gen.text, response_metadata={"finish_reason": gen.finish_reason},
                     usage_metadata={"input_tokens": gen.n_prompt_tokens, "output_tokens": gen.n_output_tokens,
                                     "total_tokens": gen.n_prompt_tokens + gen.n_output_tokens})


class ChatModelBackend:
    """A langchain-core chat model as an llmrec `LLMBackend` (no schema-constrained decoding).

    `sampling_kwargs`: pass max_tokens / temperature / frequency_penalty to the chat model per call (OpenAI-
    compatible models take them); turn off for a model that rejects unknown call arguments.
    `max_concurrency`: requests in flight for `batch` (None: langchain's default thread pool).
    """

    enforces_schema = False  # a generic chat model cannot constrain decoding: parse-and-retry only

    def __init__(self, chat_model: BaseChatModel, *, sampling_kwargs: bool = True, max_concurrency: int | None = None):
        self.chat_model = chat_model
        self.sampling_kwargs = sampling_kwargs
        self.max_concurrency = max_concurrency
        self.name = f"langchain:{getattr(chat_model, '_llm_type', type(chat_model).__name__)}"

    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None,
                 frequency_penalty=0.0) -> list[Generation]:
        """One batch through the chat model; `json_schema` is not sent (the caller validates and retries)."""
        if adapter is not None:
            raise AdapterError(f"{self.name}: a langchain chat model serves one model; point it at the adapter's "
                               f"served model name instead of passing adapter={adapter!r}")
        if not prompts:
            return []
        kwargs = dict(max_tokens=max_tokens, temperature=temperature, frequency_penalty=frequency_penalty) \
            if self.sampling_kwargs else {}
        config = {"max_concurrency": self.max_concurrency} if self.max_concurrency else None
        answers = self.chat_model.batch([to_langchain_messages(p) for p in prompts], config, **kwargs)
        return [_generation(a) for a in answers]

    def score_choices(self, prompts, choices, *, adapter=None):
        raise ModelError(f"{self.name}: score_choices needs first-token log-probabilities, which a generic chat "
                         "model does not give; use a vLLM or transformers backend for ranking")

    def close(self) -> None:
        pass


def _generation(answer: BaseMessage) -> Generation:
    """A chat model's answer as a Generation; token counts from its usage metadata (0 when it reports none)."""
    usage = getattr(answer, "usage_metadata", None) or {}
    meta = answer.response_metadata or {}
    return Generation(text=message_text(answer), n_prompt_tokens=int(usage.get("input_tokens", 0)),
                      n_output_tokens=int(usage.get("output_tokens", 0)),
                      finish_reason=str(meta.get("finish_reason") or "stop"))


__all__ = ["ChatModelBackend", "LLMBackendChatModel", "message_text", "to_langchain_messages",
           "to_llmrec_messages"]
