"""Deterministic stand-in backend, for fast wiring tests only."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from llmrec.llm.base import Generation, Messages

def minimal_instance(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """The smallest value that satisfies a (pydantic-generated) JSON schema: required keys only."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return minimal_instance(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return minimal_instance(schema[key][0], defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: minimal_instance(props[k], defs) for k in schema.get("required", [])}
    if kind == "array":
        n = schema.get("minItems", 0)
        return [minimal_instance(schema.get("items", {}), defs) for _ in range(n)]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


class FakeBackend:
    """Deterministic stand-in: `responder(messages, json_schema) -> text`, default a minimal valid JSON."""

    name = "fake"
    enforces_schema = True  # its default answer is schema-valid, like vLLM's constrained decoding

    def __init__(self, responder: Callable[[Messages, dict[str, Any] | None], str] | None = None):
        self.responder = responder
        self.calls: list[dict[str, Any]] = []

    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None,
                 frequency_penalty=0.0):
        self.calls.append({"n": len(prompts), "json_schema": json_schema is not None, "adapter": adapter,
                           "frequency_penalty": frequency_penalty})
        out = []
        for messages in prompts:
            if self.responder is not None:
                text = self.responder(messages, json_schema)
            elif json_schema is not None:
                text = json.dumps(minimal_instance(json_schema))
            else:
                text = "ok"
            n_in = sum(len(m["content"].split()) for m in messages)
            out.append(Generation(text=text, n_prompt_tokens=n_in, n_output_tokens=len(text.split())))
        return out

    def score_choices(self, prompts, choices, *, adapter=None):
        scores = []
        for messages in prompts:
            key = json.dumps(messages, sort_keys=True).encode()
            scores.append([-1.0 - int(hashlib.sha256(key + c.encode()).hexdigest()[:6], 16) / 2**24 for c in choices])
        return scores

    def close(self) -> None:
        pass

