"""`si plan`: how many prompts (and replicates) a run needs, sized from a pilot run folder.

The pilot's per-prompt values stand in for the population of prompts. For a candidate number
of prompts n (and replicates R), `simulations` runs are drawn: n prompts with replacement from
the pilot, and for each prompt R of its pilot replicates without replacement. So R can be
planned only up to the pilot's R: more replicates would need the within-prompt noise separated
from the prompt effects, which a resample of the pilot's own values cannot do. Each simulated
run is then judged exactly as the toolkit judges a real one:

- **CI half-width** (`target_half_width` W): the half-width (high − low) / 2 of
  `estimators.bootstrap_mean_ci` of the simulated per-prompt SI; n meets the target when the
  mean half-width over the simulations is at most W.
- **Separation** (`separate` = (A, B), `power`): `estimators.paired_comparison` of the
  simulated per-prompt SI of A and B on the same drawn prompts; a run separates them when the
  CI of ΔSI excludes 0 on the pilot's side (two-sided test at α = 1 − confidence). n meets the
  target when the fraction of such runs (the power) is at least `power`.

The answer is the smallest n, to within 3 % and at least `MIN_RUN_PROMPTS`, meeting the target (found by a search that uses
the 1/√n scaling of a mean's spread to guess, then bisects on simulations). Per-prompt SI
comes from `estimators.si_per_prompt` on each replicate alone: Î_col averages the per-response
log posteriors, so a prompt's SI with R replicates is the mean of its R single-replicate SIs.

A pilot of fewer than `MIN_PILOT_PROMPTS` prompts is refused per row (its few values cannot
stand for the prompt distribution); an answer more than `FAR_FACTOR` times the pilot's size is
given with a note, because the tails of the per-prompt distribution were never observed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from si_toolkit import estimators as est
from si_toolkit.errors import SIError
from si_toolkit.rank.runs import RunFolder
from si_toolkit.tensors import score_tensor

__all__ = ["PLAN_SCHEMA", "MIN_PILOT_PROMPTS", "MIN_RUN_PROMPTS", "FAR_FACTOR", "PlanConfig", "Pilot", "read_pilot", "plan_run"]

PLAN_SCHEMA = "si-toolkit/plan/v1"
MIN_PILOT_PROMPTS = 10  # fewer distinct prompts cannot stand for the prompt distribution
MIN_RUN_PROMPTS = 20  # SI-SPEC §5 flags runs of fewer prompts; their bootstrap CIs run too narrow
FAR_FACTOR = 10  # an answer beyond 10x the pilot's prompts extrapolates into unseen tails
_TOLERANCE = 0.03  # the search stops when the bracket is within 3 % of n
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PlanConfig:
    """What to plan for. At least one goal: `target_half_width` or `separate`."""

    target_half_width: float | None = field(default=None, metadata={"help": "Target 95 % CI half-width on SI (e.g. 0.05)."})
    separate: tuple[str, str] | None = field(default=None, metadata={"help": "Two set names to tell apart (paired)."})
    power: float = field(default=0.8, metadata={"help": "Wanted probability that the ΔSI CI excludes 0, in (0, 1)."})
    replicates: tuple[int, ...] = field(default=(), metadata={"help": "R values (<= the pilot's R) to plan for; () = 1, 2, 4 and the pilot's R, up to it."})
    simulations: int = field(default=100, metadata={"help": "Simulated runs per candidate n (>= 20)."})
    n_bootstrap: int = field(default=est.DEFAULT_N_RESAMPLES, metadata={"help": "Bootstrap resamples per simulated CI."})
    confidence: float = field(default=est.DEFAULT_CONFIDENCE, metadata={"help": "CI level; the test's α is 1 − it."})
    max_prompts: int = field(default=5000, metadata={"help": "Largest n searched; beyond it the target is unreachable."})
    seed: int = field(default=0, metadata={"help": "Seed of the simulations."})

    def __post_init__(self) -> None:
        if self.target_half_width is None and self.separate is None:
            raise SIError("si plan: nothing to plan; give --target-half-width W (e.g. 0.05) and/or --separate A B")
        if self.target_half_width is not None and not (math.isfinite(self.target_half_width) and self.target_half_width > 0):
            raise SIError(f"--target-half-width {self.target_half_width}: must be a positive number, e.g. 0.05")
        if not 0.0 < self.power < 1.0:
            raise SIError(f"--power {self.power}: must be in (0, 1), e.g. 0.8")
        if self.separate is not None and self.separate[0] == self.separate[1]:
            raise SIError(f"--separate {self.separate[0]} {self.separate[1]}: name two different sets")
        if any(r < 1 for r in self.replicates):
            raise SIError(f"--replicates {list(self.replicates)}: every R must be >= 1")
        if self.simulations < 20:
            raise SIError(f"--simulations {self.simulations}: must be >= 20 (default 100)")
        if self.n_bootstrap < 100:
            raise SIError(f"--n-bootstrap {self.n_bootstrap}: must be >= 100 (default {est.DEFAULT_N_RESAMPLES})")
        if not 0.0 < self.confidence < 1.0:
            raise SIError(f"confidence {self.confidence}: must be in (0, 1) (default 0.95)")
        if self.max_prompts < 2:
            raise SIError(f"--max-prompts {self.max_prompts}: must be >= 2")


@dataclass(frozen=True)
class Pilot:
    """A pilot run's per-prompt, per-replicate SI: values[set] has shape (n, R) on prompt_ids[set]."""

    run: str
    values: dict[str, FloatArray]
    prompt_ids: dict[str, list[str]]
    K: dict[str, int]


def read_pilot(run_dir: Path) -> Pilot:
    """Per-prompt SI of every set of a finished run folder, one column per replicate (SI-SPEC §4)."""
    run = RunFolder(Path(run_dir))
    manifest = run.read_manifest()
    scores = run.read_table("scores.parquet")
    values, ids, ks = {}, {}, {}
    for name, meta in manifest.get("sets", {}).items():
        t = score_tensor(scores, name, "cot", k=int(meta["K"]))
        L = est.critic_scores(t.L, t.n_tokens, "sum")  # (n, K, K, R)
        values[name] = np.stack([est.si_per_prompt(L[..., r:r + 1]) for r in range(L.shape[3])], axis=1)
        ids[name], ks[name] = t.prompt_ids, int(meta["K"])
    if not values:
        raise SIError(f"{run.manifest_path}: lists no sets; plan from a finished `si rank` run")
    return Pilot(str(run.path), values, ids, ks)


# ---------------------------------------------------------------- simulation


def _pick(values: FloatArray, prompts: npt.NDArray[np.int64], r: int, rng: np.random.Generator) -> FloatArray:
    """Per-prompt means of r replicates of the drawn prompts (pilot values: (n_pilot, R_pilot))."""
    rows = values[prompts]  # (n, R_pilot), r <= R_pilot
    chosen = np.argsort(rng.random(rows.shape), axis=1)[:, :r]  # r distinct replicates per prompt
    out: FloatArray = np.take_along_axis(rows, chosen, axis=1).mean(axis=1)
    return out


def _half_width(values: FloatArray, n: int, r: int, cfg: PlanConfig) -> float:
    """Mean over simulated runs of n prompts x r replicates of the SI CI's half-width."""
    rng = np.random.default_rng([cfg.seed, n, r])
    widths = []
    for s in range(cfg.simulations):
        sim = _pick(values, rng.integers(0, values.shape[0], size=n), r, rng)
        ci = est.bootstrap_mean_ci(sim, n_resamples=cfg.n_bootstrap, confidence=cfg.confidence, seed=cfg.seed + s)
        widths.append(math.inf if ci.low is None or ci.high is None else (ci.high - ci.low) / 2)
    return float(np.mean(widths))


def _power(a: FloatArray, b: FloatArray, n: int, r: int, cfg: PlanConfig, side: float) -> float:
    """Fraction of simulated paired runs whose ΔSI CI (A − B) excludes 0 on the pilot's side."""
    rng = np.random.default_rng([cfg.seed, n, r, 1])
    hits = 0
    for s in range(cfg.simulations):
        prompts = rng.integers(0, a.shape[0], size=n)
        c = est.paired_comparison(_pick(a, prompts, r, rng), _pick(b, prompts, r, rng),
                                  n_resamples=cfg.n_bootstrap, confidence=cfg.confidence, seed=cfg.seed + s)
        low, high = c.ci.low, c.ci.high
        if low is not None and high is not None and ((side >= 0 and low > 0) or (side <= 0 and high < 0)):
            hits += 1
    return hits / cfg.simulations


def _smallest_n(evaluate: Callable[[int], float], meets: Callable[[float], bool],
                predict: Callable[[int, float], float], start: int, n_max: int) -> tuple[int | None, float]:
    """Smallest n in [MIN_RUN_PROMPTS, n_max] with meets(evaluate(n)), to within _TOLERANCE;
    (None, value) if none.

    Guided steps jump to predict(n, value) (the n the scaling law expects) until the answer is
    bracketed by a failing n (lo) and a meeting n (hi); bisection then narrows the bracket.
    """
    cache: dict[int, float] = {}

    def value(n: int) -> float:
        if n not in cache:
            cache[n] = evaluate(n)
        return cache[n]

    floor = min(MIN_RUN_PROMPTS, n_max)
    n, lo, hi = min(max(start, floor), n_max), 0, 0
    while True:  # each step moves n by at least 10 % towards floor or n_max, so this ends
        if meets(value(n)):
            hi = n
            if lo or n == floor:
                break
            n = max(floor, min(math.floor(n / 1.1), math.floor(predict(n, cache[n]) * 0.97)))
        else:
            lo = n
            if hi:
                break
            if n >= n_max:
                return None, cache[n]
            n = min(n_max, max(math.ceil(n * 1.1), math.ceil(predict(n, cache[n]) * 1.03)))
    while lo and hi - lo > max(1, int(_TOLERANCE * hi)):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(value(mid)) else (mid, hi)
    return hi, cache[hi]


# ---------------------------------------------------------------- rows


def _row(goal: str, name: str, versus: str | None, r: int, target: float, pilot: FloatArray) -> dict[str, Any]:
    summary = pilot.mean(axis=1)  # per-prompt value with the pilot's R
    return {"goal": goal, "set": name, "versus": versus, "replicates": r, "target": target,
            "n_prompts": None, "achieved": None, "responses": None, "status": "ok", "note": None, "cheapest": False,
            "pilot": {"n_prompts": int(pilot.shape[0]), "replicates": int(pilot.shape[1]),
                      "mean": float(summary.mean()), "sd": float(summary.std(ddof=1)) if len(summary) > 1 else None}}


def _blocked(row: dict[str, Any], values: FloatArray, what: str) -> bool:
    """Mark a row the pilot cannot size (too few prompts, or no variation); True when marked."""
    n = values.shape[0]
    if n < MIN_PILOT_PROMPTS:
        row.update(status="pilot_too_small", note=f"the pilot has {n} prompts; resampling fewer than "
                   f"{MIN_PILOT_PROMPTS} cannot stand for the prompt distribution: run a pilot with --n-prompts 20 or more")
        return True
    if np.ptp(values) == 0:
        row.update(status="no_variation", note=f"the pilot's per-prompt {what} is {float(values.flat[0]):.3f} on every "
                   "prompt and replicate (e.g. identical variants), so it cannot tell how many prompts are needed")
        return True
    return False


def _finish(row: dict[str, Any], n: int | None, achieved: float, cfg: PlanConfig, k: int) -> None:
    """Fill in the search's answer; `k` variants are sampled per (prompt, replicate)."""
    pilot_n = row["pilot"]["n_prompts"]
    row["achieved"] = None if not math.isfinite(achieved) else achieved
    notes = []
    if n is None:
        row["status"] = "unreachable"
        notes.append(f"not reached with {cfg.max_prompts} prompts (--max-prompts)")
    else:
        row["n_prompts"], row["responses"] = n, n * row["replicates"] * k
        if n <= MIN_RUN_PROMPTS:
            notes.append(f"met at {n} prompts, the fewest planned for: below {MIN_RUN_PROMPTS} the few-prompts "
                         "flag is raised and bootstrap CIs are too narrow")
        if n > FAR_FACTOR * pilot_n:
            notes.append(f"{n / pilot_n:.0f}x the pilot's {pilot_n} prompts: the tails of the per-prompt "
                         "distribution were never observed; confirm with a larger pilot")
    row["note"] = "; ".join(notes) or None


def _replicates(cfg: PlanConfig, pilot_r: int) -> tuple[int, ...]:
    if not cfg.replicates:
        return tuple(r for r in (1, 2, 4) if r < pilot_r) + (pilot_r,)
    if max(cfg.replicates) > pilot_r:
        raise SIError(f"--replicates {max(cfg.replicates)}: the pilot has R = {pilot_r} (responses per prompt and variant), "
                      f"and a resample of it shows R up to {pilot_r} only; run the pilot with --replicates "
                      f"{max(cfg.replicates)} to plan for it")
    return tuple(sorted(set(cfg.replicates)))


def _width_rows(pilot: Pilot, cfg: PlanConfig) -> list[dict[str, Any]]:
    w = float(cfg.target_half_width or 0.0)
    rows = []
    for name, values in pilot.values.items():
        for r in _replicates(cfg, values.shape[1]):
            row = _row("half_width", name, None, r, w, values)
            if not _blocked(row, values, "SI"):
                n, hw = _smallest_n(partial(_half_width, values, r=r, cfg=cfg), lambda h: h <= w,
                                    lambda n, h: n * (h / w) ** 2 if math.isfinite(h) else 2 * n,
                                    values.shape[0], cfg.max_prompts)
                _finish(row, n, hw, cfg, pilot.K[name])
            rows.append(row)
    return rows


def _paired(pilot: Pilot, a: str, b: str) -> tuple[FloatArray, FloatArray]:
    """The two sets' values on their common prompts, in one order."""
    missing = [s for s in (a, b) if s not in pilot.values]
    if missing:
        raise SIError(f"--separate {a} {b}: no set {missing[0]!r} in {pilot.run}; its sets are {sorted(pilot.values)}")
    common = sorted(set(pilot.prompt_ids[a]) & set(pilot.prompt_ids[b]))
    if len(common) < 2:
        raise SIError(f"--separate {a} {b}: the sets share {len(common)} prompts in {pilot.run}; a paired plan needs >= 2")
    rows = [[pilot.prompt_ids[s].index(p) for p in common] for s in (a, b)]
    return pilot.values[a][rows[0]], pilot.values[b][rows[1]]


def _separation_rows(pilot: Pilot, cfg: PlanConfig, a_name: str, b_name: str) -> list[dict[str, Any]]:
    a, b = _paired(pilot, a_name, b_name)
    pilot_r = min(a.shape[1], b.shape[1])
    a, b = a[:, :pilot_r], b[:, :pilot_r]
    z_alpha = NormalDist().inv_cdf(1 - (1 - cfg.confidence) / 2)
    z_goal = NormalDist().inv_cdf(cfg.power) + z_alpha
    rows = []
    for r in _replicates(cfg, pilot_r):
        delta = a - b  # (n, R): per-prompt, per-replicate ΔSI of the pilot
        row = _row("separate", a_name, b_name, r, cfg.power, delta)
        if not _blocked(row, delta, "ΔSI"):
            side = float(np.sign(delta.mean()))
            clip = 0.5 / cfg.simulations

            def predict(n: int, p: float) -> float:
                # power ≈ Φ(√n·δ/σ − z_α): solve for the n whose noncentrality reaches z_goal
                z_now = NormalDist().inv_cdf(min(max(p, clip), 1 - clip)) + z_alpha
                return 4.0 * n if z_now <= 0.1 else n * (z_goal / z_now) ** 2

            n, power = _smallest_n(partial(_power, a, b, r=r, cfg=cfg, side=side), lambda p: p >= cfg.power,
                                   predict, a.shape[0], cfg.max_prompts)
            _finish(row, n, power, cfg, pilot.K[a_name] + pilot.K[b_name])
        rows.append(row)
    return rows


def _mark_cheapest(rows: list[dict[str, Any]]) -> None:
    """Among rows of one goal and set that reach it, mark the one needing fewest responses."""
    groups: dict[tuple[str, str, str | None], list[dict[str, Any]]] = {}
    for row in rows:
        if row["responses"] is not None:
            groups.setdefault((row["goal"], row["set"], row["versus"]), []).append(row)
    for group in groups.values():
        min(group, key=lambda row: (row["responses"], row["replicates"]))["cheapest"] = True


def plan_run(run_dir: Path, config: PlanConfig) -> dict[str, Any]:
    """The plan for a pilot run folder: one row per goal, set (or pair) and R (see the module doc)."""
    pilot = read_pilot(run_dir)
    rows = _width_rows(pilot, config) if config.target_half_width is not None else []
    if config.separate is not None:
        rows += _separation_rows(pilot, config, *config.separate)
    _mark_cheapest(rows)
    settings = asdict(config)
    settings["separate"] = list(config.separate) if config.separate else None
    settings["replicates"] = list(config.replicates)
    return {"schema": PLAN_SCHEMA, "run": pilot.run, "settings": settings, "rows": rows}
