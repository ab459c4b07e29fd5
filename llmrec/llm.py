"""LLM backends behind one small interface. The only module that imports vLLM (lazily).

- `VLLMBackend`: in-process `vllm.LLM` engine for batch jobs (chat, LoRARequest, structured outputs).
- `VLLMServerBackend` (in `llmrec.llm_server`, plain HTTP): client of a running OpenAI-compatible vLLM server.
- `TransformersBackend`: transformers + peft, for machines without vLLM; same prompts, JSON not enforced.
- `FakeBackend`: deterministic, for fast wiring tests only.
`make_backend(LLMConfig)` picks one. Backends return raw text; callers validate it with the pydantic model whose
JSON schema constrained it (and retry once), because only vLLM enforces the schema while decoding.

How to start a vLLM server for `VLLMServerBackend`: see `llmrec.llm_server`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from llmrec.config import LLMConfig
from llmrec.model import load_tokenizer, resolve_model

Messages = list[dict[str, str]]  # OpenAI-style chat: [{"role": "system"|"user"|"assistant", "content": ...}]


@dataclass(frozen=True)
class Generation:
    text: str
    n_prompt_tokens: int
    n_output_tokens: int
    finish_reason: str = "stop"


@runtime_checkable
class LLMBackend(Protocol):
    """What every stage needs from an LLM."""

    name: str

    def generate(
        self,
        prompts: Sequence[Messages],
        *,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        adapter: str | None = None,
        frequency_penalty: float = 0.0,
    ) -> list[Generation]:
        """One generation per chat prompt, batched; `json_schema` constrains decoding where supported.

        `frequency_penalty` (OpenAI semantics): each generated token's logit is lowered by the penalty times
        the number of times it already occurs in the answer; small models otherwise loop under greedy decoding.
        """
        ...

    def score_choices(
        self, prompts: Sequence[Messages], choices: Sequence[str], *, adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probability of each single-token answer in `choices` as the assistant's first token."""
        ...

    def close(self) -> None: ...


# --- Fake backend (tests only) --------------------------------------------------------------------


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


# --- Shared helpers -------------------------------------------------------------------------------


class AdapterError(ValueError):
    """A LoRA adapter that cannot be served: missing, not a peft adapter, or of a rank the engine refuses."""


def read_adapter_rank(adapter: str | Path) -> int:
    """The LoRA rank `r` from a peft adapter folder's adapter_config.json."""
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise AdapterError(f"adapter {adapter} has no adapter_config.json (not a peft adapter folder)")
    try:
        return int(json.loads(config.read_text())["r"])
    except (KeyError, ValueError, TypeError) as e:
        raise AdapterError(f"{config}: cannot read the LoRA rank `r`: {e!r}") from e


def adapter_id(adapter: str | Path) -> int:
    """A stable positive int per adapter folder (vLLM keys its LoRA cache by it); hashlib, not salted hash()."""
    digest = hashlib.sha256(str(Path(adapter).resolve()).encode()).hexdigest()
    return int(digest[:8], 16) % (2**31 - 2) + 1


def encode_prompts(tokenizer: Any, prompts: Sequence[Messages], max_model_len: int, max_tokens: int) -> list[list[int]]:
    """Chat messages -> prompt token ids through the model's own chat template (generation prompt added)."""
    out = []
    for i, messages in enumerate(prompts):
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + max_tokens > max_model_len:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; with max_tokens={max_tokens} it exceeds "
                             f"max_model_len={max_model_len}: shorten the narrative or raise max_model_len")
        out.append(ids)
    return out


def choice_token_ids(tokenizer: Any, choices: Sequence[str]) -> list[int]:
    """Each choice must be exactly one token (e.g. "A".."T"), so its log-prob is one softmax entry."""
    ids = []
    for c in choices:
        toks = tokenizer(c, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ValueError(f"choice {c!r} is {len(toks)} tokens {toks}; score_choices needs single-token choices")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"choices {list(choices)} map to repeated token ids {ids}")
    return ids


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# --- vLLM in-process engine -----------------------------------------------------------------------


def _structured_params(schema: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams kwargs constraining output to `schema`, across vLLM's GuidedDecodingParams rename."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema)}
    except ImportError:  # vLLM < 0.11
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}


class VLLMBackend:
    """In-process `vllm.LLM`: whole batches go to the engine at once, LoRA adapters per request."""

    name = "vllm"

    def __init__(self, config: LLMConfig | None = None):
        self.config = config = config or LLMConfig()
        self.model_dir = resolve_model(config.model)
        self.tokenizer = load_tokenizer(self.model_dir)
        cuda = _cuda_available()
        if not cuda:  # measured CPU settings; must be in the environment before vLLM starts its workers
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=str(self.model_dir), tokenizer=str(self.model_dir),
            dtype=config.dtype if (cuda or config.dtype != "auto") else "float32",
            max_model_len=config.max_model_len, gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=config.enforce_eager, seed=config.seed,
            # Compact JSON (no free whitespace between tokens): an engine-wide switch, the per-request flag is
            # ignored; without it SmolLM2 pads answers with newlines until max_tokens.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )  # fmt: skip
        if config.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=config.max_lora_rank, max_loras=config.max_loras)
        self.llm = LLM(**kwargs)

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if not self.config.enable_lora:
            raise AdapterError(f"adapter {adapter} requested but the engine was started with enable_lora=False")
        rank = read_adapter_rank(adapter)
        if rank > self.config.max_lora_rank:
            raise AdapterError(f"adapter {adapter} has rank r={rank} > max_lora_rank={self.config.max_lora_rank}; "
                               f"raise LLMConfig.max_lora_rank (one of 8, 16, 32, 64, ...) or retrain with smaller r")
        from vllm.lora.request import LoRARequest

        path = str(Path(adapter).resolve())
        return LoRARequest(Path(path).name, adapter_id(path), path)

    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None,
                 frequency_penalty=0.0):
        from vllm import SamplingParams

        if not prompts:
            return []
        ids = encode_prompts(self.tokenizer, prompts, self.config.max_model_len, max_tokens)
        extra = _structured_params(json_schema) if json_schema is not None else {}
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, frequency_penalty=frequency_penalty,
                                **extra)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params,
                                 lora_request=self._lora(adapter), use_tqdm=False)
        return [
            Generation(text=o.outputs[0].text, n_prompt_tokens=len(o.prompt_token_ids),
                       n_output_tokens=len(o.outputs[0].token_ids), finish_reason=o.outputs[0].finish_reason or "stop")
            for o in outs
        ]  # fmt: skip

    def score_choices(self, prompts, choices, *, adapter=None):
        from vllm import SamplingParams

        if not prompts:
            return []
        cids = choice_token_ids(self.tokenizer, choices)
        ids = encode_prompts(self.tokenizer, prompts, self.config.max_model_len, 1)
        # logprob_token_ids: raw (pre-sampling) log-probs of exactly these tokens at the first position.
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=cids)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params,
                                 lora_request=self._lora(adapter), use_tqdm=False)
        return [[float(o.outputs[0].logprobs[0][t].logprob) for t in cids] for o in outs]

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
            import gc

            gc.collect()


# --- transformers + peft --------------------------------------------------------------------------


class TransformersBackend:
    """Plain `model.generate` with left padding; adapters loaded once each via peft and switched per call.

    JSON schemas are NOT enforced while decoding here (callers validate and retry), so this is the reference
    for agreement tests and the fallback where vLLM is missing, not the fast path.
    """

    name = "transformers"

    def __init__(self, config: LLMConfig | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.config = config = config or LLMConfig()
        self.model_dir = resolve_model(config.model)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"auto": "auto" if self.device == "cuda" else torch.float32, "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]  # fmt: skip
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype, local_files_only=True)
        self.model.to(self.device).eval()
        self.generator_seed = config.seed
        self.eos_ids = {self.tokenizer.eos_token_id, *_as_list(self.model.generation_config.eos_token_id)} - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._adapters: dict[str, str] = {}  # resolved adapter folder -> peft adapter name
        self._content: Any = None  # [V] bool, built on first use by _content_tokens

    def _use(self, adapter: str | None) -> contextlib.AbstractContextManager:
        """Activate `adapter` (loading it on first use) or, for None, run the bare base weights."""
        from peft import PeftModel

        if adapter is None:
            return self.model.disable_adapter() if isinstance(self.model, PeftModel) else contextlib.nullcontext()
        read_adapter_rank(adapter)  # a clear error for a folder that is not a peft adapter
        path = str(Path(adapter).resolve())
        if path not in self._adapters:
            name = f"a{adapter_id(path)}"
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
            self._adapters[path] = name
        self.model.set_adapter(self._adapters[path])
        return contextlib.nullcontext()

    def _pad(self, ids: list[list[int]]) -> tuple[Any, Any, Any]:
        """Left-pad to (B, T): input_ids, attention_mask and position_ids counted from each row's first token."""
        import torch

        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(ids), width), dtype=torch.long)  # (B, T)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x):] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, T)
        return input_ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None,
                 frequency_penalty=0.0):
        import torch

        ids = encode_prompts(self.tokenizer, prompts, self.config.max_model_len, max_tokens)
        out: list[Generation] = []
        torch.manual_seed(self.generator_seed)
        with self._use(adapter), torch.no_grad():
            for start in range(0, len(ids), self.config.batch_size):
                chunk = ids[start : start + self.config.batch_size]
                input_ids, mask, _ = self._pad(chunk)
                sample = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {
                    "do_sample": False}  # fmt: skip
                if frequency_penalty:
                    # Unconstrained here: JSON punctuation must stay cheap to repeat (vLLM's grammar mask keeps
                    # it whatever its penalty), so only tokens with a letter or digit are penalised.
                    sample["logits_processor"] = [FrequencyPenalty(frequency_penalty, input_ids.shape[1],
                                                                   self._content_tokens() if json_schema else None)]
                seqs = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens,
                                           pad_token_id=self.pad_id, **sample)  # (B, T + new)
                for prompt, row in zip(chunk, seqs[:, input_ids.shape[1]:].tolist()):
                    stop = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
                    new = row if stop is None else row[: stop + 1]
                    out.append(Generation(text=self.tokenizer.decode(new, skip_special_tokens=True),
                                          n_prompt_tokens=len(prompt), n_output_tokens=len(new),
                                          finish_reason="length" if stop is None else "stop"))
        return out

    def _content_tokens(self) -> Any:
        """[V] bool: vocabulary tokens that hold a letter or digit (memoised)."""
        if self._content is None:
            import torch

            size = self.model.get_output_embeddings().weight.shape[0]
            texts = self.tokenizer.convert_ids_to_tokens(list(range(min(size, len(self.tokenizer)))))
            flags = [any(c.isalnum() for c in t.replace("Ġ", "").replace("Ċ", "")) for t in texts]
            self._content = torch.tensor(flags + [False] * (size - len(flags)), device=self.device)
        return self._content

    def score_choices(self, prompts, choices, *, adapter=None):
        import torch

        cids = torch.tensor(choice_token_ids(self.tokenizer, choices))
        ids = encode_prompts(self.tokenizer, prompts, self.config.max_model_len, 1)
        scores: list[list[float]] = []
        with self._use(adapter), torch.no_grad():
            for start in range(0, len(ids), self.config.batch_size):
                input_ids, mask, positions = self._pad(ids[start : start + self.config.batch_size])
                logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
                logp = torch.log_softmax(logits[:, -1, :].float(), dim=-1)  # (B, vocab): next-token log-probs
                scores.extend(logp[:, cids.to(logp.device)].tolist())  # (B, n_choices)
        return scores

    def close(self) -> None:
        self.__dict__.pop("model", None)


class FrequencyPenalty:
    """transformers logits processor with OpenAI/vLLM `frequency_penalty` semantics: logits of tokens already
    generated (prompt excluded) drop by penalty x their count so far."""

    def __init__(self, penalty: float, prompt_len: int, only: Any = None):
        self.penalty, self.prompt_len, self.only = penalty, prompt_len, only  # only: [V] bool, tokens to penalise

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_len:]  # (B, t)
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        if self.only is not None:
            counts = counts * self.only[: scores.shape[1]].to(scores.dtype)
        return scores - self.penalty * counts


def _as_list(x: Any) -> list[Any]:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


def make_backend(config: LLMConfig | None = None) -> LLMBackend:
    """The backend `config.backend` names, built from the same config."""
    config = config or LLMConfig()
    if config.backend == "vllm":
        return VLLMBackend(config)
    if config.backend == "transformers":
        return TransformersBackend(config)
    from llmrec.llm_server import VLLMServerBackend

    return VLLMServerBackend(config.server_url, config.server_model, concurrency=config.batch_size,
                             timeout_s=config.request_timeout_s, seed=config.seed)
