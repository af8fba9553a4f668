"""Recorded ablation of the ENIGMA trainer on the embedded model: grpo, grpo+sami, grpo+ot, enigma.

    .venv/bin/python experiments/ablations.py                 # train all four, then plot + write results.md
    .venv/bin/python experiments/ablations.py --plot-only     # redraw from experiments/results/*/metrics.jsonl

Each ablation trains SmolLM2-135M-Instruct (fp32, CPU, one thread) for STEPS steps from the same
initial weights with the same seed, so every run samples the same prompts and, at step 1, the
same completions; runs differ only through the loss terms their preset turns on. The SAMI
bound and the Sinkhorn value are logged in every run (monitor_off_terms), trained on only where
the preset says so. Runs live in a work folder (checkpoints are 0.5 GB each) and resume if the
script is killed; their metrics.jsonl and train_config.json are copied to experiments/results/<name>/.

Settings are chosen to fit a 2-core CPU in about half an hour; see results.md for why the
reward has a length term (the format-only reward is 0 for every completion of this model at
affordable lengths, which would leave GRPO without any signal).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "experiments" / "results"
ABLATIONS = ("grpo", "grpo+sami", "grpo+ot", "enigma")
PRINCIPLES = ROOT / "principles" / "helpful-vs-harmless.yaml"
STEPS = 30
SETTINGS = {
    "model": "embedded", "dtype": "float32", "device": "cpu",
    "prompts": "builtin:open", "n_prompts": 30, "prompts_per_step": 1,
    "num_generations": 2, "max_completion_length": 32, "temperature": 1.0,
    "learning_rate": 1e-5, "lr_schedule": "constant", "max_grad_norm": 1.0,
    "reward": "graded", "reward_length_weight": 1.0, "reward_length_max_chars": 200, "reward_length_soft_chars": 180,
    "monitor_off_terms": True, "seed": 0, "save_every": 10, "save_total_limit": 1, "tensorboard": False,
}
CURVES = {  # metric -> (title, y label)
    "reward_mean": ("Reward (graded format + length term)", "mean reward"),
    "format_rate": ("Strict format rate", "fraction of completions"),
    "entropy": ("Mean token entropy", "nats"),
    "sami_mi_bound": ("SAMI bound log K − L_SAMI (mean critic, CoT span)", "nats"),
    "sinkhorn": ("Sinkhorn divergence to the reference (last layer)", "reference-variance units"),
    "kl": ("KL to the reference (k3, per token)", "nats"),
    "completion_length_mean": ("Completion length", "tokens"),
    "grad_norm": ("Gradient norm before clipping", "L2 norm"),
}
ROLL = 5  # steps in the rolling mean drawn over the raw curves


def run_ablations(work: Path, steps: int) -> None:
    """Train every ablation (resuming a killed one) and copy its logs into RESULTS."""
    import torch

    from si_toolkit.principles import load_principle_set
    from si_toolkit.train.config import TrainConfig
    from si_toolkit.train.trainer import train

    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process is far faster under load
    principle_set = load_principle_set(PRINCIPLES)
    for name in ABLATIONS:
        out = work / name.replace("+", "-")
        config = TrainConfig(**SETTINGS, preset=name, max_steps=steps)
        start = time.perf_counter()
        print(f"[{name}] training {steps} steps into {out}", flush=True)
        train(config, principle_set, out, resume=out.exists(),
              on_step=lambda row, n=name: print(f"[{n}] step {row['step']}: reward {row['reward_mean']:.3f} "
                                                f"sami {row.get('sami_mi_bound', math.nan):.4f} "
                                                f"ot {row.get('sinkhorn', math.nan):.5f} {row['step_time']:.1f} s",
                                                flush=True))
        print(f"[{name}] done in {time.perf_counter() - start:.0f} s", flush=True)
        target = RESULTS / name.replace("+", "-")
        target.mkdir(parents=True, exist_ok=True)
        for file in ("metrics.jsonl", "train_config.json"):
            shutil.copy2(out / file, target / file)


def load_runs() -> dict[str, list[dict]]:
    runs = {}
    for name in ABLATIONS:
        path = RESULTS / name.replace("+", "-") / "metrics.jsonl"
        if path.is_file():
            runs[name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return runs


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _rolling(values: list[float], width: int) -> list[float]:
    return [sum(values[max(0, i - width + 1): i + 1]) / len(values[max(0, i - width + 1): i + 1]) for i in range(len(values))]


def plot(runs: dict[str, list[dict]]) -> list[Path]:
    """One PNG per metric (raw values faint, rolling mean solid) and one grid of all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(ABLATIONS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
    paths = []
    grid, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    for ax_grid, (key, (title, ylabel)) in zip(axes.flat, CURVES.items()):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for target in (ax, ax_grid):
            for name, rows in runs.items():
                steps, values = _series(rows, key)
                if not values:
                    continue
                target.plot(steps, values, color=colors[name], alpha=0.25, linewidth=1)
                target.plot(steps, _rolling(values, ROLL), color=colors[name], linewidth=2, label=name)
            target.set_title(title, fontsize=10)
            target.set_xlabel("step")
            target.set_ylabel(ylabel)
            target.grid(alpha=0.3)
            target.legend(fontsize=8)
        fig.tight_layout()
        path = RESULTS / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    grid.suptitle(f"ENIGMA ablations on SmolLM2-135M-Instruct (CPU; faint: per step, solid: {ROLL}-step rolling mean)")
    grid.tight_layout()
    grid.savefig(RESULTS / "ablations.png", dpi=90)
    plt.close(grid)
    return [RESULTS / "ablations.png", *paths]


def _mean(rows: list[dict], key: str, part: slice) -> float:
    values = [float(r[key]) for r in rows[part] if r.get(key) is not None]
    return sum(values) / len(values) if values else math.nan


def summary_table(runs: dict[str, list[dict]]) -> str:
    """Markdown table: first-5 and last-5 step means of each curve, per ablation."""
    keys = ("reward_mean", "format_rate", "entropy", "sami_mi_bound", "sinkhorn", "kl", "completion_length_mean")
    head = "| ablation | steps | " + " | ".join(f"{k} (first 5 → last 5)" for k in keys) + " | s/step |"
    lines = [head, "|" + "---|" * (len(keys) + 3)]
    for name, rows in runs.items():
        cells = []
        for key in keys:
            first, last = _mean(rows, key, slice(0, 5)), _mean(rows, key, slice(-5, None))
            digits = 5 if key in ("sinkhorn", "kl") else 3
            cells.append(f"{first:.{digits}f} → {last:.{digits}f}")
        step_time = _mean(rows, "step_time", slice(None))
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + f" | {step_time:.1f} |")
    return "\n".join(lines)


def write_results(runs: dict[str, list[dict]], figures: list[Path]) -> Path:
    """results.md: the settings, the numbers, the figures; the interpretation is edited by hand below the marker."""
    path = RESULTS / "results.md"
    keep = ""
    marker = "<!-- interpretation -->"
    if path.is_file() and marker in path.read_text():
        keep = path.read_text().split(marker, 1)[1]
    settings = "\n".join(f"- `{k}`: `{v}`" for k, v in SETTINGS.items())
    images = "\n".join(f"![{p.stem}]({p.name})" for p in figures)
    text = (
        "# ENIGMA ablations on the embedded model\n\n"
        f"Generated by `experiments/ablations.py` ({STEPS} steps per ablation, principle set "
        f"`{PRINCIPLES.relative_to(ROOT)}`, K = 2). Shared settings:\n\n{settings}\n\n"
        "Presets: `grpo` (λ_SAMI = 0, λ_OT = 0), `grpo+sami` (λ_SAMI = 1), `grpo+ot` (λ_OT = 1), "
        "`enigma` (both). Every run logs the SAMI bound and the Sinkhorn value, trained on or not.\n\n"
        "## Numbers\n\n" + summary_table(runs) + "\n\n## Curves\n\n" + images + "\n\n" + marker + keep
    )
    path.write_text(text, encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--work", type=Path, default=ROOT / "reports" / "ablations-work")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    if not args.plot_only:
        run_ablations(args.work, args.steps)
    runs = load_runs()
    figures = plot(runs)
    print(write_results(runs, figures))


if __name__ == "__main__":
    main()
