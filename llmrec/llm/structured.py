"""One validated-generation path: generate -> parse -> check -> retry the failures -> flagged fallback.

Every LLM stage that wants JSON (interest mining, cold start, explanations) runs this loop:

1. schema-guided generation: `backend.generate(json_schema=schema.model_json_schema())`, the prompts sent
   `batch_size` at a time (None: all of them in ONE call, the widest batch decodes fastest);
2. parse with the same pydantic model (constrained decoding is not trusted: only vLLM enforces the schema,
   and a token budget can cut any answer); when the raw text fails, an optional `repair` proposes fixed
   candidates (e.g. `salvage_truncated` for an answer cut at the budget, `extract_json_object` for prose
   around the JSON from an unconstrained backend);
3. a semantic `check(obj, index) -> reason | None` (placeholders echoed, too few distinct interests...);
4. the failed prompts, and only those, are retried in one batch at `retry_temperature` (a greedy retry would
   repeat the same answer), `retries` times;
5. whatever still fails gets `fallback(index)`, flagged (`Validated.fallback`) and counted.

`GenerationStats` counts each step, keeps a few raw failures as examples, and records whether the backend
enforces the schema while decoding (`enforces_schema`; remote langchain chat models and the transformers
backend do not, so there parse-and-retry is the only guard).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmrec.errors import ModelError
from llmrec.llm.base import Generation, LLMBackend, Messages

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Check = Callable[[Any, int], "str | None"]  # (validated object, prompt index) -> reason it is unusable, or None
Repair = Callable[[str, str], Sequence[str]]  # (raw text, finish_reason) -> candidate texts to parse, in order
MAX_EXAMPLES = 10  # raw failures kept in the stats


class GenerationSettings(BaseModel):
    """How one stage samples: the knobs `generate_validated` passes to `backend.generate`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    retry_temperature: float = Field(default=0.7, ge=0.0, le=2.0)  # retries must not repeat the greedy answer
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=2.0)
    adapter: str | None = None  # LoRA adapter folder, None = base model
    retries: int = Field(default=1, ge=0, le=5)  # batched re-asks of the failed prompts before the fallback
    batch_size: int | None = Field(default=None, ge=1)  # prompts per backend.generate call; None = all in one
    # False: strings' maximum lengths are left out of the decoding schema and only validated after decoding, so an
    # over-long string is a counted parse failure and retried (see `without_max_lengths`)
    decode_max_lengths: bool = True


@dataclass(frozen=True)
class Validated(Generic[T]):
    """One prompt's outcome: the validated pydantic object, or the fallback value when `fallback` is True."""

    value: T
    fallback: bool = False
    attempt: int = 0  # 0 = first try, n = n-th retry; for a fallback, the number of answers it had
    repaired: bool = False  # the value came from a `repair` candidate, not the raw text
    text: str = ""  # the raw text of the last answer (for a fallback: the last failed one)


@dataclass
class GenerationStats:
    """Counts of one `generate_validated` run; `merge` adds shards' stats."""

    prompts: int = 0
    valid_first: int = 0  # usable at the first try
    valid_final: int = 0  # usable after the retries (first try included); prompts - valid_final = fallbacks
    fallbacks: int = 0
    answers: int = 0  # generations, retries included
    parse_failures: int = 0  # answers that were not schema-valid JSON (after repair)
    semantic_failures: int = 0  # schema-valid answers `check` refused
    repaired: int = 0  # usable answers that needed a `repair` candidate (e.g. truncated JSON closed)
    calls: int = 0  # backend.generate calls
    prompt_tokens: int = 0
    output_tokens: int = 0
    enforces_schema: bool = False  # the backend constrains decoding to the schema (vLLM); else parse-and-retry only
    seconds: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)  # first failures: index, attempt, kind, reason, raw

    @property
    def valid_retry(self) -> int:
        return self.valid_final - self.valid_first

    @property
    def answers_valid(self) -> int:
        """Answers that were usable (each prompt has at most one)."""
        return self.valid_final

    def record_failure(self, index: int, attempt: int, kind: str, reason: str, raw: str) -> None:
        if kind == "parse":
            self.parse_failures += 1
        else:
            self.semantic_failures += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"index": index, "attempt": attempt, "kind": kind, "reason": reason[:300],
                                  "raw": raw[:300]})

    def merge(self, other: GenerationStats) -> GenerationStats:
        """The sum of two runs (examples concatenated up to MAX_EXAMPLES; enforces_schema only if both did)."""
        out = GenerationStats(**{k: getattr(self, k) + getattr(other, k) for k in _SUMMED})
        out.enforces_schema = self.enforces_schema and other.enforces_schema
        out.examples = (self.examples + other.examples)[:MAX_EXAMPLES]
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(valid_retry=self.valid_retry,
                 json_valid_rate=round(self.valid_final / self.answers, 4) if self.answers else None)
        return d


_SUMMED = ("prompts", "valid_first", "valid_final", "fallbacks", "answers", "parse_failures", "semantic_failures",
           "repaired", "calls", "prompt_tokens", "output_tokens", "seconds")


def enforces_schema(backend: Any) -> bool:
    """Whether `backend` constrains decoding to the JSON schema (a backend says so by `enforces_schema = True`)."""
    return bool(getattr(backend, "enforces_schema", False))


def extract_json_object(text: str) -> str | None:
    """The text from its first "{" to its last "}" (prose around the JSON cut), or None without braces."""
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else None


def salvage_truncated(text: str) -> str | None:
    """Close JSON cut off inside its list of elements after the last complete element, else None.

    Two shapes are handled, the wire formats of mining and cold start: a top-level array `[[...],[...],[..`
    (closed with "]") and an object holding one array `{"k":[{...},{...},{..` (closed with "]}").
    """
    stripped = text.lstrip()
    if not stripped or stripped[0] not in "[{":
        return None
    # Elements of the list end where the depth falls back to 1 (array) or 2 (object around an array).
    element_depth, closing = (1, "]") if stripped[0] == "[" else (2, "]}")
    depth, in_str, escape, last_end = 0, False, False, -1
    for pos, ch in enumerate(text):
        if in_str:
            escape = ch == "\\" and not escape
            if ch == '"' and not escape:
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == element_depth:
                last_end = pos
    return text[: last_end + 1] + closing if last_end >= 0 else None


def repair_truncated(text: str, finish_reason: str) -> list[str]:
    """`Repair` for a schema-constrained backend: an answer cut at the token budget, closed (else nothing)."""
    fixed = salvage_truncated(text) if finish_reason == "length" else None
    return [fixed] if fixed is not None else []


def repair_unconstrained(text: str, finish_reason: str) -> list[str]:
    """`Repair` for a backend that may wrap the JSON in prose: the braces' span, then the truncation salvage."""
    start = text.find("{")
    body = text[start:] if start >= 0 else text
    return [c for c in (extract_json_object(text), *repair_truncated(body, finish_reason)) if c is not None]


def _parse(schema: type[M], text: str, finish_reason: str, repair: Repair | None) -> tuple[M, bool]:
    """The validated object and whether a repair candidate was needed; ValidationError if none validates."""
    try:
        return schema.model_validate_json(text), False
    except ValidationError:
        for candidate in (repair(text, finish_reason) if repair is not None else ()):
            try:
                return schema.model_validate_json(candidate), True
            except ValidationError:
                continue
        raise


def without_max_lengths(schema: Any) -> Any:
    """`schema` (a JSON schema) without the maximum lengths of its strings.

    Grammar-constrained decoders (xgrammar) expand a bounded string into a counted repetition, which makes every
    step's token mask costlier; measured on 256 mining prompts with SmolLM2 on 2 cores, 136 s instead of 149 s
    for the same answers. Minimum lengths stay (minLength 1 is cheap, and without it the model pads with empty
    strings: 18 of 981 answers in a full ML-100K run), and so do array bounds, which keep answers short.
    """
    if isinstance(schema, dict):
        bound = "maxLength" if schema.get("type") == "string" else None
        return {k: without_max_lengths(v) for k, v in schema.items() if k != bound}
    if isinstance(schema, list):
        return [without_max_lengths(v) for v in schema]
    return schema


def _generate(backend: LLMBackend, prompts: Sequence[Messages], wire: dict[str, Any], settings: GenerationSettings,
              temperature: float, stats: GenerationStats) -> list[Generation]:
    """All prompts through the backend, `batch_size` per call (None: one call)."""
    size = settings.batch_size or max(1, len(prompts))
    gens: list[Generation] = []
    for start in range(0, len(prompts), size):
        chunk = list(prompts[start : start + size])
        out = backend.generate(chunk, json_schema=wire, max_tokens=settings.max_tokens, temperature=temperature,
                               adapter=settings.adapter, frequency_penalty=settings.frequency_penalty)
        if len(out) != len(chunk):
            raise ModelError(f"backend {getattr(backend, 'name', backend)!r} returned {len(out)} generations "
                             f"for {len(chunk)} prompts")
        stats.calls += 1
        gens += out
    return gens


def generate_validated(
    backend: LLMBackend,
    prompts: Sequence[Messages],
    *,
    schema: type[M],
    check: Check | None,
    fallback: Callable[[int], T],
    config: GenerationSettings,
    repair: Repair | None = None,
) -> tuple[list[Validated[M | T]], GenerationStats]:
    """One `Validated` per prompt (same order) and the run's stats; see the module docstring for the loop.

    `check(obj, i)` sees each schema-valid object of prompt i and returns why it is unusable, or None (it runs
    once per answer, so a prompt that is retried is checked again). `repair(text, finish_reason)` proposes
    fixed texts to parse when the raw one fails (see `salvage_truncated`, `extract_json_object`).
    """
    t0 = time.perf_counter()
    stats = GenerationStats(prompts=len(prompts), enforces_schema=enforces_schema(backend))
    wire = schema.model_json_schema()
    wire = wire if config.decode_max_lengths else without_max_lengths(wire)
    done: dict[int, Validated] = {}
    last_text: dict[int, str] = {}
    pending = list(range(len(prompts)))
    for attempt in range(config.retries + 1):
        if not pending:
            break
        temperature = config.temperature if attempt == 0 else config.retry_temperature
        gens = _generate(backend, [prompts[i] for i in pending], wire, config, temperature, stats)
        failed = []
        for i, gen in zip(pending, gens):
            stats.answers += 1
            stats.prompt_tokens += gen.n_prompt_tokens
            stats.output_tokens += gen.n_output_tokens
            last_text[i] = gen.text
            try:
                obj, repaired = _parse(schema, gen.text, gen.finish_reason, repair)
            except ValidationError as e:
                stats.record_failure(i, attempt, "parse", _short(e), gen.text)
                failed.append(i)
                continue
            reason = check(obj, i) if check is not None else None
            if reason is not None:
                stats.record_failure(i, attempt, "semantic", reason, gen.text)
                failed.append(i)
                continue
            done[i] = Validated(value=obj, attempt=attempt, repaired=repaired, text=gen.text)
            stats.valid_first += attempt == 0
            stats.valid_final += 1
            stats.repaired += repaired
        pending = failed
    for i in pending:
        done[i] = Validated(value=fallback(i), fallback=True, attempt=config.retries + 1, text=last_text.get(i, ""))
    stats.fallbacks = len(pending)
    if pending:
        log.info("%d of %d prompts fell back after %d tries", len(pending), len(prompts), config.retries + 1)
    stats.seconds = time.perf_counter() - t0
    return [done[i] for i in range(len(prompts))], stats


def _short(error: ValidationError) -> str:
    """The first validation error in one line (the full list can be pages for a long answer)."""
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", ()))
    return f"{error.error_count()} error(s); {where or 'root'}: {first.get('msg', str(error))}"
