"""transformers + peft backend: the reference for agreement tests and the path where vLLM is missing."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from llmrec.config import LLMConfig
from llmrec.llm.base import Generation, adapter_id, choice_token_ids, encode_prompts, read_adapter_rank
from llmrec.llm.model import load_tokenizer, resolve_model


class TransformersBackend:
    """Plain `model.generate` with left padding; adapters loaded once each via peft and switched per call.

    JSON schemas are NOT enforced while decoding here (callers validate and retry), so this is the reference
    for agreement tests and the fallback where vLLM is missing, not the fast path.
    """

    name = "transformers"
    enforces_schema = False  # plain sampling: JSON is validated and retried, never guaranteed

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


