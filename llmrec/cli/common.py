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
LOG_ENV = "LLMREC_LOG_LEVEL"  # DEBUG, INFO (default), WARNING, ERROR

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


PACKAGES = ("llmrec", "retrieval", "finetune", "explain", "benchmarks")  # the repo's own loggers


class OwnInfo(logging.Filter):
    """Lets through the repo's own records at any level and other libraries' warnings and errors only, so
    INFO by default does not pull in httpx/transformers/ray chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in PACKAGES


class LineFormatter(logging.Formatter):
    """An INFO record is its message alone (what the commands printed before logging); any other level
    says its level and logger; DEBUG runs add timestamps."""

    def __init__(self, debug: bool = False):
        super().__init__(("%(asctime)s " if debug else "") + "%(levelname)s %(name)s: %(message)s")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO and not record.exc_info and not self.debug:
            return record.getMessage()
        return super().format(record)


def log_level(verbose: int = 0, quiet: bool = False) -> int:
    """INFO by default, WARNING with --quiet, DEBUG with -v; $LLMREC_LOG_LEVEL when no flag is given."""
    if verbose and quiet:
        raise typer.BadParameter("--verbose and --quiet contradict each other; give one")
    if verbose:
        return logging.DEBUG
    if quiet:
        return logging.WARNING
    name = os.environ.get(LOG_ENV, "INFO").upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise typer.BadParameter(f"{LOG_ENV}={name!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    return level


def configure_logging(verbose: int = 0, quiet: bool = False) -> int:
    """Standard `logging` to stderr, one line per message, at `log_level(verbose, quiet)`; returns the level.

    Replaces the root handlers (`force=True`), so calling it again (a second command in one process,
    tests) never stacks a second handler. The handler writes above a running progress bar.
    """
    from llmrec.progress import BarSafeHandler

    level = log_level(verbose, quiet)
    handler = BarSafeHandler(sys.stderr)
    handler.setFormatter(LineFormatter(debug=level <= logging.DEBUG))
    handler.addFilter(OwnInfo())
    logging.basicConfig(level=level, handlers=[handler], force=True)
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
