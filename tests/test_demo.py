"""The demo's adapter choice: reuse what exists, else a short fine-tune with the short-run settings."""

from __future__ import annotations

import finetune
from llmrec.cli.demo import demo_adapter


def test_demo_adapter_reuses_an_adapter_or_runs_the_short_fine_tune(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = []
    monkeypatch.setattr(finetune, "finetune_dataset", lambda ds, config, out: runs.append((config, out)))
    assert demo_adapter("none", None, 30_000) is None and demo_adapter("my/lora", None, 30_000) == "my/lora"
    assert demo_adapter("auto", None, 12_345) == "adapters/ml-100k-lora-demo"
    (config, out), = runs
    assert config.max_train_tokens == 12_345 and config.learning_rate > 3e-4 and config.batch_size == 2
    (tmp_path / "adapters" / "ml-100k-lora").mkdir(parents=True)
    (tmp_path / "adapters" / "ml-100k-lora" / "adapter_config.json").write_text("{}")
    assert demo_adapter("auto", None, 12_345) == "adapters/ml-100k-lora" and len(runs) == 1  # the full one, reused
