"""Token counts with the LLM's own tokenizer, fast enough for narratives of millions of events.

`TokenCounter` memoises the counts of recurring strings (rendered items, "(time, behaviour)" pairs) and probes
whether the tokenizer is additive over the joins the narrative format uses (see `llmrec.narrative`).
`load_narrative_tokenizer` loads the tokenizer offline without preparing the whole default model.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np

class TokenCounter:
    """Counts tokens of strings with the LLM's tokenizer, memoising parts that recur (items, pairs)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._cache: dict[str, int] = {}
        self.additive = self._probe_additive()

    def encode_lengths(self, texts: list[str]) -> np.ndarray:
        """Token counts of `texts`, in one batched call, no special tokens, nothing cached."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        if self._backend is not None:
            enc = self._backend.encode_batch(texts, add_special_tokens=False)
            return np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(texts))
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(texts))

    def count(self, texts: list[str] | np.ndarray) -> np.ndarray:
        """Memoised token counts (for the recurring parts of entries)."""
        cache = self._cache
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, self.encode_lengths(missing).tolist()))
        return np.fromiter((cache[t] for t in texts), dtype=np.int64, count=len(texts))

    def _probe_additive(self) -> bool:
        """True when joining our parts never merges tokens across a join (checked on typical parts)."""
        parts = [
            ["today liked", ", 3d ago clicked x12", " | Star Wars (1977; Action, Sci-Fi)"],
            ["Mar 1998 watched", ", 1997 disliked", " | 'Til There Was You (1997; Drama)", "\n"],
            ["12d ago purchased x2", " | 101 Dalmatians (1996; Children's, Comedy)", "\n", "1995 liked",
             " | Ça ira... (Élan)", "\n", "today watched", " | M*A*S*H!"],
        ]
        joined = self.encode_lengths(["".join(p) for p in parts])
        split = [int(self.encode_lengths(p).sum()) for p in parts]
        return joined.tolist() == split


_COUNTERS: "weakref.WeakKeyDictionary[Any, TokenCounter]" = weakref.WeakKeyDictionary()


def token_counter(tokenizer: Any) -> TokenCounter:
    """One memoising counter per tokenizer object, reused across calls (the item cache is the speed-up)."""
    if isinstance(tokenizer, TokenCounter):
        return tokenizer
    try:
        counter = _COUNTERS.get(tokenizer)
        if counter is None:
            counter = _COUNTERS[tokenizer] = TokenCounter(tokenizer)
        return counter
    except TypeError:  # not weak-referenceable: no reuse
        return TokenCounter(tokenizer)


def load_narrative_tokenizer(model: str | Path | None = None) -> Any:
    """The LLM's tokenizer, offline. A model folder -> its tokenizer (`llmrec.llm.model.load_tokenizer`).

    `None` -> the default SmolLM2: from the prepared default model when it exists, else straight from the
    packaged GGUF, saved once as a tokenizer-only folder under $LLMREC_HOME/tokenizers (parsing the GGUF takes
    ~10-30 s; the saved folder loads in ~1 s), so narrating never needs the full model prepared.
    """
    from llmrec.llm import model as llm_model

    if model is not None or llm_model.is_model_dir(llm_model.default_model_dir()):
        return llm_model.load_tokenizer(model)
    return _load_packaged_tokenizer(str(llm_model.llmrec_home() / "tokenizers" / llm_model.DEFAULT_MODEL_NAME))


_PACKAGED_TOKENIZERS: dict[str, Any] = {}


def _load_packaged_tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    from llmrec.llm import model as llm_model
    from llmrec.io import atomic_dir

    if folder in _PACKAGED_TOKENIZERS:
        return _PACKAGED_TOKENIZERS[folder]
    out = Path(folder)
    if not (out / "tokenizer.json").is_file():
        gguf = llm_model.packaged_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with atomic_dir(out) as tmp:
            tok.save_pretrained(tmp)
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    _PACKAGED_TOKENIZERS[folder] = tok
    return tok
