"""Library code logs (never prints); the CLI shows INFO by default on stderr and hides it with --quiet;
progress bars appear only on an interactive stderr at INFO."""

from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmrec.cli import app
from llmrec.cli.common import configure_logging
from llmrec.config import SASRecConfig
from llmrec.progress import BarSafeHandler, bars_enabled, progress_bar

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("llmrec", "retrieval", "finetune", "explain")  # llmrec/cli/ may print: stdout is its output


def _print_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]


def _library_files() -> list[Path]:
    files = [p for pkg in LIBRARY for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in files if (ROOT / "llmrec" / "cli") not in p.parents]


def test_library_modules_never_call_print():
    files = _library_files()
    assert len(files) > 50 and ROOT / "llmrec" / "eval" / "run.py" in files  # the scan sees the packages
    found = {str(p.relative_to(ROOT)): lines for p in files if (lines := _print_calls(p))}
    assert found == {}, f"print() in library code (use logging.getLogger(__name__)): {found}"


def test_the_scan_finds_a_print(tmp_path: Path):
    bad = tmp_path / "m.py"
    bad.write_text("def f(log=print):\n    print('x')\n    log('y')\n")
    assert _print_calls(bad) == [2]  # a call, not the bare name used as a default


# --- The CLI's logging --------------------------------------------------------------------------------


@pytest.fixture
def sasrec_args(tiny, tmp_path: Path) -> list[str]:
    """`train-sasrec` on 20 users, two epochs of a 16-wide model: a second, and one INFO line per epoch."""
    cfg = SASRecConfig(maxlen=20, hidden=16, blocks=1, heads=2, batch_size=8, threads=1, epochs=2, eval_every=1,
                       patience=5).to_json(tmp_path / "s.json")
    return ["train-sasrec", "--dataset", str(tiny.save(tmp_path / "data")), "--out", str(tmp_path / "m"),
            "--config", str(cfg)]


def _epoch_lines(text: str) -> list[dict]:
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith('{"epoch"')]


def test_cli_shows_info_on_stderr_by_default_and_quiet_hides_it(sasrec_args, monkeypatch):
    monkeypatch.delenv("LLMREC_LOG_LEVEL", raising=False)
    res = CliRunner().invoke(app, sasrec_args)
    assert res.exit_code == 0, res.output
    epochs = _epoch_lines(res.stderr)
    assert [e["epoch"] for e in epochs] == [1, 2] and "ndcg@10" in epochs[0]  # plain lines, as printed before
    assert _epoch_lines(res.stdout) == [] and json.loads(res.stdout.splitlines()[-1])["best_epoch"] in (1, 2)

    quiet = CliRunner().invoke(app, ["--quiet", *sasrec_args])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr.strip() == "" and json.loads(quiet.stdout.splitlines()[-1])["model"] == "sasrec_ce"


def test_a_second_command_in_one_process_logs_each_line_once(sasrec_args, monkeypatch):
    monkeypatch.delenv("LLMREC_LOG_LEVEL", raising=False)
    for _ in range(2):
        res = CliRunner().invoke(app, sasrec_args)
        assert res.exit_code == 0, res.output
        assert [e["epoch"] for e in _epoch_lines(res.stderr)] == [1, 2]
    assert sum(isinstance(h, BarSafeHandler) for h in logging.getLogger().handlers) == 1


def test_levels_from_flags_and_environment(monkeypatch):
    monkeypatch.delenv("LLMREC_LOG_LEVEL", raising=False)
    assert configure_logging() == logging.INFO
    assert configure_logging(quiet=True) == logging.WARNING
    assert configure_logging(verbose=1) == logging.DEBUG == configure_logging(verbose=2)
    monkeypatch.setenv("LLMREC_LOG_LEVEL", "error")
    assert configure_logging() == logging.ERROR and logging.getLogger().level == logging.ERROR
    res = CliRunner().invoke(app, ["-v", "-q", "recommend", "--help"])
    assert res.exit_code != 0 and "contradict" in res.output


def test_info_lines_are_bare_other_levels_name_themselves_and_foreign_info_stays_out():
    configure_logging()
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, BarSafeHandler))
    handler.stream = out = io.StringIO()
    logging.getLogger("retrieval.train").info("epoch %d", 3)
    logging.getLogger("llmrec.build").warning("careful")
    logging.getLogger("httpx").info("HTTP Request: GET /")  # another library's chatter
    logging.getLogger("httpx").warning("retrying")
    assert out.getvalue().splitlines() == ["epoch 3", "WARNING llmrec.build: careful", "WARNING httpx: retrying"]


# --- Progress bars ------------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_at_info(monkeypatch):
    logging.getLogger().setLevel(logging.INFO)
    assert bars_enabled(_Tty()) and not bars_enabled(io.StringIO())
    logging.getLogger().setLevel(logging.WARNING)  # --quiet, or a library caller that configured nothing
    assert not bars_enabled(_Tty())

    logging.getLogger().setLevel(logging.INFO)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # CI: stderr is a file
    bar = progress_bar(range(3), "epochs", 3)
    assert bar.disable and list(bar) == [0, 1, 2]
    manual = progress_bar(desc="shards", total=5, unit="user", initial=2)
    manual.update(3)
    manual.close()
    assert manual.disable and __import__("sys").stderr.getvalue() == ""

    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    with progress_bar(range(2), "epochs", 2) as drawn:
        assert not drawn.disable and list(drawn) == [0, 1]
    assert "epochs" in tty.getvalue()
