"""The `llmrec` command line: one typer app; each command group registers itself from its own module."""

from __future__ import annotations

import typer

from llmrec.cli.common import LlmrecGroup, configure_logging

app = typer.Typer(
    name="llmrec",
    help="LLM-powered recommendation: narratives, LLM interests and tags, three-tower retrieval, explanations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=LlmrecGroup,  # any LlmrecError / config ValidationError -> one `error: ...` line, exit code 2
)


@app.callback()
def _root(verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                      help="Also log DEBUG messages (with timestamps) to stderr."),
          quiet: bool = typer.Option(False, "--quiet", "-q",
                                     help="Log warnings and errors only (no progress messages or bars).")) -> None:
    # Progress messages go to stderr at INFO by default (or $LLMREC_LOG_LEVEL); results go to stdout.
    configure_logging(verbose, quiet)

# Command groups (each module defines `register(app)`); keep one line per module.
from llmrec.cli import data as _data  # noqa: E402

_data.register(app)
from llmrec.cli import model as _model  # noqa: E402

_model.register(app)
from llmrec.cli import mine as _mine  # noqa: E402

_mine.register(app)
from llmrec.cli import demo as _demo  # noqa: E402

_demo.register(app)
from llmrec.cli import narrate as _narrate  # noqa: E402

_narrate.register(app)
from llmrec.cli import retriever as _retriever  # noqa: E402

_retriever.register(app)
from llmrec.cli import evaluate as _evaluate  # noqa: E402

_evaluate.register(app)
from llmrec.cli import finetune as _finetune  # noqa: E402

_finetune.register(app)
from llmrec.cli import sasrec as _sasrec  # noqa: E402

_sasrec.register(app)
from llmrec.cli import serve as _serve  # noqa: E402

_serve.register(app)


def main() -> None:
    app()
