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


def test_demo_skips_an_adapter_tuned_on_an_older_mining_prompt(tmp_path, monkeypatch):
    import json

    from llmrec.interests import PROMPTS
    from llmrec.llm.prompts import prompt_hashes

    monkeypatch.chdir(tmp_path)
    runs = []
    monkeypatch.setattr(finetune, "finetune_dataset", lambda ds, config, out: runs.append(out))
    full = tmp_path / "adapters" / "ml-100k-lora"
    full.mkdir(parents=True)
    (full / "adapter_config.json").write_text("{}")
    (full / "manifest.json").write_text(json.dumps({"prompt_hashes": {"interests": "an-older-prompt"}}))
    assert demo_adapter("auto", None, 1_000) == "adapters/ml-100k-lora-demo" and len(runs) == 1  # stale: not used
    (full / "manifest.json").write_text(json.dumps({"prompt_hashes": prompt_hashes(PROMPTS)}))
    assert demo_adapter("auto", None, 1_000) == "adapters/ml-100k-lora" and len(runs) == 1
