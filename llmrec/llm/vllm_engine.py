"""In-process vLLM engine for batch jobs: the only module that imports vLLM (lazily, at engine start)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from llmrec.config import LLMConfig
from llmrec.errors import AdapterError
from llmrec.llm.base import Generation, adapter_id, choice_token_ids, encode_prompts, read_adapter_rank
from llmrec.llm.model import load_tokenizer, resolve_model


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
    enforces_schema = True  # structured outputs constrain decoding to the JSON schema

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


