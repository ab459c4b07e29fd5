"""Progress bars for the long loops (training epochs, LoRA steps, evaluation rows, job shards).

One rule for all of them: a bar is drawn only on an interactive stderr while llmrec logs at INFO or below.
A CI log (stderr redirected to a file) or a `--quiet` run gets no bar, so its log stays one line per
message. Library callers that never configure logging sit at Python's default WARNING level and get no
bar either. Log lines go through `BarSafeHandler`, which writes above an active bar instead of through it.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOGGER = "llmrec"  # its effective level decides (the root level the CLI sets, unless someone set it)


def bars_enabled(stream: IO[str] | None = None) -> bool:
    """True when `stream` (default stderr) is a terminal and llmrec's INFO messages are shown."""
    stream = sys.stderr if stream is None else stream
    is_tty = getattr(stream, "isatty", None)
    return bool(is_tty and is_tty()) and logging.getLogger(LOGGER).isEnabledFor(logging.INFO)


def progress_bar(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None, *,
                 unit: str = "it", initial: int = 0) -> tqdm:
    """A tqdm bar on stderr over `iterable` (or a manual one, advanced with `.update(n)`), off unless
    `bars_enabled()`. A disabled bar still iterates and accepts update/set_postfix/close as no-ops."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, file=sys.stderr,
                disable=not bars_enabled(), dynamic_ncols=True, leave=False)


class BarSafeHandler(logging.StreamHandler):
    """A stream handler that prints through `tqdm.write`, so a log line lands above a running bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: report and carry on
            self.handleError(record)
