"""LLM backends behind one small interface. The only module that imports vLLM (lazily).

- `VLLMBackend`: in-process `vllm.LLM` engine for batch jobs (chat, LoRARequest, structured outputs).
- `VLLMServerBackend` (in `llmrec.llm.server`, plain HTTP): client of a running OpenAI-compatible vLLM server.
- `TransformersBackend`: transformers + peft, for machines without vLLM; same prompts, JSON not enforced.
- `FakeBackend`: deterministic, for fast wiring tests only.
`make_backend(LLMConfig)` picks one. Backends return raw text; callers validate it with the pydantic model whose
JSON schema constrained it (and retry once), because only vLLM enforces the schema while decoding.

How to start a vLLM server for `VLLMServerBackend`: see `llmrec.llm.server`.
"""

from llmrec.errors import AdapterError
from llmrec.llm.backends import make_backend
from llmrec.llm.base import (
    Generation,
    LLMBackend,
    Messages,
    adapter_id,
    choice_token_ids,
    encode_prompts,
    read_adapter_rank,
)
from llmrec.llm.fake import FakeBackend, minimal_instance
from llmrec.llm.transformers_backend import FrequencyPenalty, TransformersBackend
from llmrec.llm.vllm_engine import VLLMBackend

__all__ = ["AdapterError", "FakeBackend", "FrequencyPenalty", "Generation", "LLMBackend", "Messages",
           "TransformersBackend", "VLLMBackend", "adapter_id", "choice_token_ids", "encode_prompts",
           "make_backend", "minimal_instance", "read_adapter_rank"]
