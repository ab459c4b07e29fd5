"""What every command shares: one error exit, logging on stderr, and configs loaded as `--config FILE` then flags.

Errors: the root command group (`LlmrecGroup`) catches any `LlmrecError`, a pydantic `ValidationError` of a
config, or a missing input file from whichever command runs below it, and ends the process with a one-line
`error: ...` on stderr and exit code 2; commands raise, they never print-and-exit themselves.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

import click
import typer
from pydantic import BaseModel, ValidationError
from typer.core import TyperGroup

from llmrec.errors import LlmrecError

EXIT_ERROR = 2  # every handled error; 1 stays click's usage error, 0 success
LOG_ENV = "LLMREC_LOG_LEVEL"  # DEBUG, INFO, WARNING (default), ERROR

C = TypeVar("C", bound=BaseModel)


def error_line(err: BaseException) -> str:
    """One line naming what is wrong; a ValidationError lists each field (dotted path) and its message."""
    if isinstance(err, ValidationError):
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in err.errors())
        return f"invalid {err.title}: {fields}"
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)  # KeyError's str() quotes
    return " ".join(text.split()) or type(err).__name__


def fail(err: BaseException) -> click.exceptions.Exit:
    """Print `error: ...` on stderr and return the exit-code-2 exception for the caller to raise."""
    print(f"error: {error_line(err)}", file=sys.stderr)
    return typer.Exit(code=EXIT_ERROR)


class LlmrecGroup(TyperGroup):
    """The root group: every subcommand (nested groups included) runs inside this one handler."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (LlmrecError, ValidationError, FileNotFoundError) as e:
            logging.getLogger("llmrec.cli").debug("command failed", exc_info=True)  # traceback with -vv
            raise fail(e) from None


def configure_logging(verbose: int = 0) -> int:
    """Standard `logging` to stderr: WARNING by default, -v INFO, -vv DEBUG, else $LLMREC_LOG_LEVEL; the level."""
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    else:
        name = os.environ.get(LOG_ENV, "WARNING").upper()
        level = logging.getLevelName(name)
        if not isinstance(level, int):
            raise typer.BadParameter(f"{LOG_ENV}={name!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    logging.basicConfig(stream=sys.stderr, level=level, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return level


def merge_given(base: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """`base` with the given (non-None) flags on top; a dict flag merges into a nested config field by field."""
    out = dict(base)
    for key, value in flags.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_given(out[key], value)
        elif value is not None:
            out[key] = value
    return out


def load_config(cls: type[C], path: str | Path | None = None, **flags: Any) -> C:
    """`cls` from the JSON file at `path` (or its defaults), then the flags that were given, validated again.

    A flag left at None was not given and keeps the file's value; `stage={"field": v}` sets one field of a
    nested config. Everything passes the same validators as the file (no `model_copy(update=...)`).
    """
    base = cls.model_validate_json(Path(path).read_text()) if path is not None else cls()
    return cls.model_validate(merge_given(base.model_dump(), flags))
