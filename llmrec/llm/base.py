"""The backend protocol and the types every LLM backend shares (no vLLM import here).

`Messages` is an OpenAI-style chat; `Generation` is one answer with its token counts. Backends return raw
text; callers validate it with the pydantic model whose JSON schema constrained it (`llmrec.llm.structured`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from llmrec.errors import AdapterError

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

