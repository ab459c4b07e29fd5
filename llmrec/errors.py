"""One base class for every error llmrec raises on purpose: `except LlmrecError` catches them all.

Each subclass also derives from the builtin it refines (ValueError for bad input, RuntimeError for a stage
that cannot run), so existing `except ValueError` callers keep working. The CLI turns any `LlmrecError` into
a one-line message and exit code 2.
"""

from __future__ import annotations


class LlmrecError(Exception):
    """Base of every typed llmrec error; the message names the file, field or setting at fault."""


class DataError(LlmrecError, ValueError):
    """Bad input that cannot be skipped; the message names the file, row and field."""


class ModelError(LlmrecError, RuntimeError):
    """The model cannot be found, prepared or loaded; the message says which path and what to do."""


class AdapterError(LlmrecError, ValueError):
    """A LoRA adapter that cannot be served: missing, not a peft adapter, or of a rank the engine refuses."""


class EngineError(LlmrecError, RuntimeError):
    """An LLM engine cannot start or run as configured; the message names the setting to change."""


class PromptError(LlmrecError, ValueError):
    """A prompt file is missing, malformed, or rendered with a missing variable."""


class JobError(LlmrecError, RuntimeError):
    """A job cannot run or resume as asked (names the folder, shard and keys at fault)."""


class EncoderError(LlmrecError, RuntimeError):
    """The requested text encoder cannot be loaded; the message says what to install."""


class RecommendError(LlmrecError, ValueError):
    """A request the recommender cannot serve; the message says which argument and why."""


class UnknownUserError(RecommendError, KeyError):
    """The user id is not in the recommender's user table."""


class UnknownItemError(RecommendError):
    """An item id is not in the catalogue."""
