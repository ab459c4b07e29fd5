"""`make_backend(LLMConfig)`: the backend the config names."""

from __future__ import annotations

from llmrec.config import LLMConfig
from llmrec.llm.base import LLMBackend


def make_backend(config: LLMConfig | None = None) -> LLMBackend:
    """The backend `config.backend` names, built from the same config."""
    config = config or LLMConfig()
    if config.backend == "vllm":
        from llmrec.llm.vllm_engine import VLLMBackend

        return VLLMBackend(config)
    if config.backend == "transformers":
        from llmrec.llm.transformers_backend import TransformersBackend

        return TransformersBackend(config)
    from llmrec.llm.server import VLLMServerBackend

    return VLLMServerBackend(config.server_url, config.server_model, concurrency=config.batch_size,
                             timeout_s=config.request_timeout_s, seed=config.seed)
