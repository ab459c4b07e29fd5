"""In-process vLLM engine for batch jobs: the only module that imports vLLM (lazily, at engine start)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from llmrec.config import LLMConfig
from llmrec.errors import AdapterError, EngineError
from llmrec.llm.base import Generation, adapter_id, choice_token_ids, encode_prompts, read_adapter_rank
from llmrec.llm.model import load_tokenizer, resolve_model


logger = logging.getLogger(__name__)

KV_CACHE_FLOOR = 256 * 2**20  # below this the CPU engine can hold only a few long prompts
KV_CACHE_CAP = 4 * 2**30  # max_model_len x max_num_seqs is a worst case; vLLM schedules fewer sequences if short
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_bytes_per_token(model_dir: str | Path, dtype: str) -> int:
    """KV-cache bytes one token occupies: layers x (K and V) x kv_heads x head_dim x bytes per value."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
        layers, heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EngineError(f"{path}: cannot read the KV-cache shape ({type(e).__name__}: {e}); "
                          f"set LLMConfig.kv_cache_bytes explicitly") from None
    return layers * 2 * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)


def kv_cache_bytes(config: LLMConfig, per_token: int) -> int:
    """The CPU KV-cache budget in bytes: `config.kv_cache_bytes`, else derived from the request shape.

    Derived = max_model_len x max_num_seqs x per-token size, clipped to [KV_CACHE_FLOOR, KV_CACHE_CAP]; it
    depends on the model and config only, never on the host's NUMA layout (vLLM's share-of-node-0 does).
    """
    if config.kv_cache_bytes is not None:
        return config.kv_cache_bytes
    return int(min(max(config.max_model_len * config.max_num_seqs * per_token, KV_CACHE_FLOOR), KV_CACHE_CAP))


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


def _memory_kwargs(config: LLMConfig, model_dir: Path, dtype: str, cuda: bool) -> dict[str, Any]:
    """vLLM engine args for the KV-cache budget: a GPU share on CUDA, bytes on CPU (NUMA-independent)."""
    if cuda and config.kv_cache_bytes is None:
        return {"gpu_memory_utilization": config.gpu_memory_utilization}
    size = kv_cache_bytes(config, kv_bytes_per_token(model_dir, dtype))
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):  # vLLM's CPU platform lets this legacy variable win
        logger.warning("VLLM_CPU_KVCACHE_SPACE=%s GiB overrides LLMConfig's KV budget (%d bytes); unset it to "
                       "use the config", os.environ["VLLM_CPU_KVCACHE_SPACE"], size)
    return {"kv_cache_memory_bytes": size}


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

        dtype = config.dtype if (cuda or config.dtype != "auto") else "float32"
        kwargs: dict[str, Any] = dict(
            model=str(self.model_dir), tokenizer=str(self.model_dir), dtype=dtype,
            max_model_len=config.max_model_len, max_num_seqs=config.max_num_seqs,
            enforce_eager=config.enforce_eager, seed=config.seed,
            # Compact JSON (no free whitespace between tokens): an engine-wide switch, the per-request flag is
            # ignored; without it SmolLM2 pads answers with newlines until max_tokens.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )  # fmt: skip
        if config.block_size is not None:
            kwargs["block_size"] = config.block_size
        if config.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=config.max_lora_rank, max_loras=config.max_loras)
        kwargs.update(_memory_kwargs(config, self.model_dir, dtype, cuda))
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:  # vLLM reports start failures as assorted types from its worker processes
            budget = ("LLMConfig.gpu_memory_utilization" if cuda and config.kv_cache_bytes is None
                      else f"LLMConfig.kv_cache_bytes (now {kwargs.get('kv_cache_memory_bytes')})")
            first = (str(e).strip().splitlines() or [""])[0]
            raise EngineError(f"vLLM engine for {self.model_dir} could not start ({type(e).__name__}: {first}); "
                              f"lower {budget}, or LLMConfig.max_model_len ({config.max_model_len}) / "
                              f"max_num_seqs ({config.max_num_seqs}), or use backend='transformers'") from e

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


