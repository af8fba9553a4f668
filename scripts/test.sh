#!/usr/bin/env bash
# Set up (dev extras + Chromium) and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two workers for the two cores; each worker keeps torch to one thread so they do not fight.
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -n 2 -q "$@"
