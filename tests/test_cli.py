"""The command line's shared behaviour: one error exit, logging, configs loaded as file-then-flags, and every
config class round-tripping (STYLE 21)."""

from __future__ import annotations

import copy
import inspect
import json
import logging
import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

import llmrec.config as config_module
from llmrec.cli import app
from llmrec.cli.common import EXIT_ERROR, configure_logging, error_line, load_config
from llmrec.config import NarrativeConfig, SASRecConfig, StageConfig, TowerConfig

CONFIG_CLASSES = sorted(
    (c for _, c in inspect.getmembers(config_module, inspect.isclass)
     if issubclass(c, StageConfig) and c is not StageConfig and c.__module__ == config_module.__name__),
    key=lambda c: c.__name__)  # fmt: skip


# --- Every config class round-trips -----------------------------------------------------------------


def test_every_config_class_is_covered():
    names = {c.__name__ for c in CONFIG_CLASSES}
    assert {"LLMConfig", "TowerConfig", "RecommenderConfig", "EvaluateConfig", "FinetuneConfig"} <= names


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_config_round_trips_and_rejects_unknown_keys(cls, tmp_path: Path):
    cfg = cls()
    assert cls.model_validate(cfg.model_dump()) == cfg
    assert cls.model_validate_json(cfg.model_dump_json()) == cfg
    assert cls.from_json(cfg.to_json(tmp_path / "c.json")) == cfg
    assert copy.deepcopy(cfg) == cfg and copy.copy(cfg) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        cls.model_validate({**cfg.model_dump(), "no_such_knob": 1})
    with pytest.raises(ValidationError, match="frozen"):
        setattr(cfg, next(iter(cls.model_fields)), None)


# --- Config loading: file, then the flags that were given -------------------------------------------


def test_unset_flag_keeps_the_file_value_and_a_given_flag_wins(tmp_path: Path):
    path = TowerConfig(seed=7, epochs=3, encoder="hashed-bow").to_json(tmp_path / "t.json")
    kept = load_config(TowerConfig, path, seed=None, epochs=None, logq=None)
    assert (kept.seed, kept.epochs, kept.logq) == (7, 3, True)
    given = load_config(TowerConfig, path, seed=0, logq=False)
    assert (given.seed, given.epochs, given.encoder, given.logq) == (0, 3, "hashed-bow", False)
    assert load_config(TowerConfig, None, seed=5) == TowerConfig(seed=5)


def test_overrides_pass_the_validators_again(tmp_path: Path):
    path = SASRecConfig(hidden=64, heads=2).to_json(tmp_path / "s.json")
    with pytest.raises(ValidationError, match="divisible by heads"):
        load_config(SASRecConfig, path, heads=3)
    with pytest.raises(ValidationError, match="greater than or equal to 32"):
        load_config(NarrativeConfig, None, max_tokens=8)


# --- One error exit ---------------------------------------------------------------------------------


def _one_error_line(res) -> str:
    assert res.exit_code == EXIT_ERROR, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_config_validation_error_is_one_line_and_exit_2(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hidden": 64, "heads": 1, "no_such_knob": 1}))
    line = _one_error_line(CliRunner().invoke(app, ["train-sasrec", "--config", str(bad)]))
    assert "SASRecConfig" in line and "no_such_knob" in line and "Extra inputs" in line


def test_missing_recommender_folder_is_one_line_and_exit_2(tmp_path: Path):
    line = _one_error_line(CliRunner().invoke(app, ["recommend", "--artifacts", str(tmp_path / "nope"),
                                                    "--user", "1"]))
    assert "not a recommender folder" in line


def test_library_error_from_a_command_is_one_line_and_exit_2(tiny, tmp_path: Path):
    folder = tiny.save(tmp_path / "tiny")
    line = _one_error_line(CliRunner().invoke(app, ["narrate", "--dataset", str(folder), "--out",
                                                    str(tmp_path / "n.parquet"), "--as-of", "yesterday-ish"]))
    assert "--as-of 'yesterday-ish'" in line


def test_error_line_flattens_messages():
    try:
        SASRecConfig(hidden=63, heads=2, epochs=0)
    except ValidationError as e:
        line = error_line(e)
    assert "\n" not in line and line.startswith("invalid SASRecConfig: ") and "epochs:" in line
    assert error_line(ValueError("two\nlines")) == "two lines"
    from llmrec.errors import UnknownUserError

    assert error_line(UnknownUserError("unknown user_id 'x'")) == "unknown user_id 'x'"  # not KeyError's quotes


# --- The narrative budget flag ------------------------------------------------------------------------


def test_narrative_tokens_flag_and_config_file(tiny, tmp_path: Path):
    import pyarrow.parquet as pq

    folder = tiny.save(tmp_path / "tiny")
    cfg = NarrativeConfig(max_tokens=96).to_json(tmp_path / "n.json")
    for args, budget in (([], 96), (["--narrative-tokens", "128"], 128), (["--max-tokens", "64"], 64)):
        out = tmp_path / f"n{budget}.parquet"
        res = CliRunner().invoke(app, ["narrate", "--dataset", str(folder), "--out", str(out), "--config", str(cfg),
                                       *args])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout.strip().splitlines()[-1])["max_tokens"] == budget
        assert (pq.read_table(out).to_pandas()["n_tokens"] <= budget).all()


# --- Logging ------------------------------------------------------------------------------------------


def test_logging_level_from_flag_or_environment(monkeypatch):
    """Defaults and flags in detail: tests/test_logging.py."""
    monkeypatch.delenv("LLMREC_LOG_LEVEL", raising=False)
    assert configure_logging(0) == logging.INFO
    assert configure_logging(1) == logging.DEBUG and configure_logging(2) == logging.DEBUG
    monkeypatch.setenv("LLMREC_LOG_LEVEL", "error")
    assert configure_logging(0) == logging.ERROR and logging.getLogger().level == logging.ERROR
    monkeypatch.setenv("LLMREC_LOG_LEVEL", "LOUD")
    res = CliRunner().invoke(app, ["recommend", "--help"])
    assert res.exit_code == 2 and "LLMREC_LOG_LEVEL='LOUD'" in res.output


def test_verbose_flag_turns_on_debug_logs(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("LLMREC_LOG_LEVEL", raising=False)
    CliRunner().invoke(app, ["-v", "recommend", "--artifacts", str(tmp_path), "--user", "1"])
    assert logging.getLogger().level == logging.DEBUG


def test_nested_flags_merge_field_by_field(tmp_path: Path):
    from llmrec.cli.common import merge_given
    from llmrec.config import RecommenderConfig

    path = RecommenderConfig.model_validate({"mining": {"batch_size": 7, "narrative_tokens": 150},
                                             "jobs": {"shard_size": 2}}).to_json(tmp_path / "r.json")
    cfg = load_config(RecommenderConfig, path, mining={"batch_size": None, "max_tokens": 100},
                      jobs={"executor": None})
    assert (cfg.mining.batch_size, cfg.mining.narrative_tokens, cfg.mining.max_tokens) == (7, 150, 100)
    assert cfg.jobs.shard_size == 2 and cfg.jobs.executor == "local"
    assert merge_given({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "c": 5}, "d": None}) == {
        "a": {"b": 1, "c": 5}, "d": 3}
    with pytest.raises(ValidationError, match="jobs.executor"):
        load_config(RecommenderConfig, path, jobs={"executor": "slurm"})


def test_mine_interests_reads_its_config_file_and_flags(ml100k, monkeypatch, tmp_path: Path):
    import llmrec.llm
    from llmrec.config import RecommenderConfig
    from llmrec.llm import FakeBackend

    monkeypatch.setattr(llmrec.llm, "make_backend", lambda config: FakeBackend())
    path = RecommenderConfig.model_validate({"mining": {"batch_size": 7, "narrative_tokens": 150},
                                             "jobs": {"shard_size": 2}, "llm": {"backend": "transformers"}}
                                            ).to_json(tmp_path / "r.json")
    res = CliRunner().invoke(app, ["mine-interests", "--out", str(tmp_path / "m"), "--users", "2", "--config",
                                   str(path), "--batch-size", "5"])
    assert res.exit_code == 0, res.output
    written = json.loads((tmp_path / "m" / "config.json").read_text())
    assert written["mining"]["batch_size"] == 5 and written["mining"]["narrative_tokens"] == 150
    assert written["narrative"]["max_tokens"] == 150 and written["jobs"]["shard_size"] == 2
    assert written["llm"]["backend"] == "transformers" and written["llm"]["enable_lora"] is False



def test_mine_interests_as_of_valid_is_recorded_and_checked_by_the_evaluation(ml100k, monkeypatch, tmp_path: Path):
    import llmrec.llm
    from llmrec.errors import DataError
    from llmrec.eval.protocol import require_as_of
    from llmrec.llm import FakeBackend

    monkeypatch.setattr(llmrec.llm, "make_backend", lambda config: FakeBackend())
    for stage in ("test", "valid"):
        args = ["mine-interests", "--out", str(tmp_path / stage), "--users", "2", "--backend", "transformers"]
        res = CliRunner().invoke(app, args + ([] if stage == "test" else ["--as-of", "valid"]))
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / stage / "manifest.json").read_text())["as_of"] == stage
    require_as_of(tmp_path / "valid", "valid")
    require_as_of(tmp_path / "valid" / "profiles.parquet", "valid")
    with pytest.raises(DataError, match="mined as of 'test'.*--as-of valid"):
        require_as_of(tmp_path / "test", "valid")
    with pytest.raises(DataError, match="missing"):
        require_as_of(tmp_path / "nowhere", "valid")
    res = CliRunner().invoke(app, ["mine-interests", "--out", str(tmp_path / "x"), "--as-of", "train"])
    assert res.exit_code != 0 and "--as-of must be test or valid" in res.output

def test_train_retriever_keeps_the_config_files_seed_unless_given(tiny, tmp_path: Path):
    from retrieval.towers import ThreeTowerModel

    data = tiny.save(tmp_path / "data")
    cfg = TowerConfig(encoder="hashed-bow", cache_dir=str(tmp_path / "cache"), dim=16, hidden=32, max_len=20,
                      layers=1, heads=2, batch_size=8, tag_batch_size=32, uniform_negatives=32, epochs=1,
                      patience=1, threads=1, beta_grid=(1.0,), seed=7).to_json(tmp_path / "towers.json")
    for args, seed in (([], 7), (["--seed", "0"], 0)):
        out = tmp_path / f"towers{seed}"
        res = CliRunner().invoke(app, ["train-retriever", "--dataset", str(data), "--out", str(out), "--config",
                                       str(cfg), *args])
        assert res.exit_code == 0, res.output
        model = ThreeTowerModel.from_pretrained(out)
        assert model.config.seed == seed and model.config.logq is True and model.config.epochs == 1
