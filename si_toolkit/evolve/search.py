"""The racing search: generations of candidates, each raced by successive halving.

Generation 0 races the seed against `population` children of it; each later generation races
the best candidate so far against `population` children of the previous generation's two best.
A race runs in rounds on growing prefixes of the selection prompts (e.g. 6, 12, 24, 48): after
each round, a challenger is dropped when it is clearly inadmissible (fidelity.py), when its SI
upper bound falls below the best admissible lower bound, or when it is not in the better half
of the challengers (successive halving); the survivors get the next, larger prefix. The
incumbent (the seed, then the best so far) is the yardstick and always runs to the end, so a
challenger becomes the best only by beating it on every selection prompt. Finalists are
measured on all selection prompts; the inadmissible ones never win.

Everything is deterministic given the run seed and the cache, so rerunning a killed run replays
the finished part from the cache without model calls and continues where it stopped. The time
budget is checked between groups of candidates, before any model work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from si_toolkit import estimators as est
from si_toolkit.evolve.candidate import Candidate, texts_hash
from si_toolkit.evolve.fidelity import Admission, admission, clearly_inadmissible
from si_toolkit.evolve.measure import BudgetStop, Evaluator, Measurement
from si_toolkit.evolve.operators import Rewriter, make_child

__all__ = ["SearchSettings", "Info", "Result", "SearchOutcome", "round_schedule", "run_search", "SEED_ID"]

SEED_ID = "seed"
MIN_ROUND_PROMPTS = 4  # a bootstrap CI on fewer prompts is too rough to drop anything on
MAX_ROUNDS = 4
SEQUENCES_PER_GROUP = 64  # new sequences per model call, roughly: a CPU samples best in batches this size
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SearchSettings:
    population: int
    generations: int
    selection: tuple[str, ...]  # selection prompt ids, in the run's fixed order
    tolerance: float
    seed: int
    n_bootstrap: int = est.DEFAULT_N_RESAMPLES
    confidence: float = est.DEFAULT_CONFIDENCE


@dataclass(frozen=True)
class Info:
    """How a candidate came to be."""

    id: str
    generation: int
    candidate: Candidate
    texts: tuple[str, ...]
    parent: str | None
    second_parent: str | None
    operator: str
    detail: str


@dataclass(frozen=True)
class Result:
    """A candidate's last measurement in a race and how the race ended for it."""

    measurement: Measurement
    si: float
    si_ci: est.Interval
    admission: Admission
    status: str = "racing"  # finalist | eliminated | inadmissible | stopped
    reason: str = ""

    @property
    def n_prompts(self) -> int:
        return len(self.measurement.prompt_ids)


@dataclass
class SearchOutcome:
    infos: dict[str, Info] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)  # from each candidate's first race
    generations: list[dict[str, Any]] = field(default_factory=list)
    best: str = SEED_ID
    best_on_all_prompts: bool = False  # False when the budget ended the search before any finalist
    stopped: bool = False


def round_schedule(n: int) -> list[int]:
    """Prompt counts of the racing rounds: halving down from n, at most MAX_ROUNDS, >= MIN_ROUND_PROMPTS."""
    sizes = [n]
    while len(sizes) < MAX_ROUNDS and sizes[0] // 2 >= MIN_ROUND_PROMPTS:
        sizes.insert(0, sizes[0] // 2)
    return sizes


class _Search:
    def __init__(self, settings: SearchSettings, evaluator: Evaluator, seed: Candidate, pool: Sequence[str],
                 rewriter: Rewriter | None, progress: Progress) -> None:
        self.s = settings
        self.evaluator = evaluator
        self.pool = pool
        self.rewriter = rewriter
        self.progress = progress
        self.schedule = round_schedule(len(settings.selection))
        self.out = SearchOutcome()
        self.seen: set[str] = set()
        self.order: dict[str, int] = {}
        self._add(Info(SEED_ID, 0, seed, seed.variant_texts(), None, None, "seed", "the seed set as written"))

    def _add(self, info: Info) -> Info:
        self.order[info.id] = len(self.order)  # creation order breaks ties: the incumbent before its children
        self.out.infos[info.id] = info
        self.seen.add(texts_hash(info.texts))
        return info

    # ---------------------------------------------------------------- children
    def _children(self, g: int, parents: list[Info]) -> list[Info]:
        children = []
        for i in range(1, self.s.population + 1):
            rng = np.random.default_rng([self.s.seed, g, i])
            child = make_child([p.candidate for p in parents], self.pool, rng, rewriter=self.rewriter,
                               seen=lambda c: texts_hash(c.variant_texts()) in self.seen)
            if child is None:
                continue
            second = parents[child.second_parent].id if child.second_parent is not None else None
            edit = child.edit
            children.append(self._add(Info(f"g{g}-c{i}", g, edit.candidate, edit.candidate.variant_texts(),
                                           parents[child.parent].id, second, edit.operator, edit.detail)))
        return children

    # ---------------------------------------------------------------- racing
    def _measure(self, info: Info, prompt_ids: Sequence[str]) -> Result:
        m = self.evaluator.measure(info.texts, prompt_ids)
        ci = est.bootstrap_mean_ci(m.si, n_resamples=self.s.n_bootstrap, confidence=self.s.confidence,
                                   seed=self.s.seed)
        return Result(m, float(m.si.mean()), ci, admission(m, self.s.tolerance))

    def _race(self, entrants: list[Info]) -> tuple[dict[str, Result], bool]:
        """Race the entrants; (final result per measured entrant, whether the budget stopped it)."""
        alive = list(entrants)
        last: dict[str, Result] = {}
        done: dict[str, Result] = {}
        previous = 0
        for rnd, n in enumerate(self.schedule):
            prompt_ids = self.s.selection[:n]
            for group in _groups(alive, n - previous):
                try:
                    self.evaluator.fill([e.texts for e in group], prompt_ids)
                except BudgetStop:
                    for e in alive:
                        if e.id in last:
                            done[e.id] = replace(last[e.id], status="stopped", reason="the time budget ran out")
                    return done, True
                for e in group:
                    last[e.id] = self._measure(e, prompt_ids)
            previous = n
            alive = self._eliminate(alive, last, done, final=rnd == len(self.schedule) - 1, incumbent=entrants[0].id)
            self.progress(f"  round {rnd + 1}/{len(self.schedule)} on {n} prompts: {len(alive)} go on")
        return done, False

    def _eliminate(self, alive: list[Info], last: dict[str, Result], done: dict[str, Result],
                   *, final: bool, incumbent: str) -> list[Info]:
        """Drop challengers after a round; the incumbent (the seed, then the best so far) is the
        yardstick and always runs to the last round, so a challenger wins only by beating it on
        every selection prompt."""
        keep = []
        for e in alive:
            r = last[e.id]
            if final and not r.admission.admissible:
                done[e.id] = replace(r, status="inadmissible", reason=r.admission.reason or "")
            elif not final and e.id != incumbent and clearly_inadmissible(
                    r.measurement, self.s.tolerance, n_bootstrap=self.s.n_bootstrap, seed=self.s.seed):
                done[e.id] = replace(r, status="inadmissible",
                                     reason=f"clearly inadmissible: {r.admission.reason or 'fidelity CI below the bar'}")
            else:
                keep.append(e)
        keep = self._ci_rule(keep, last, done, self.order, incumbent)
        ranked = sorted(keep, key=lambda e: (not last[e.id].admission.admissible, -last[e.id].si, self.order[e.id]))
        if final:
            for e in ranked:
                done[e.id] = replace(last[e.id], status="finalist", reason="measured on every selection prompt")
            return ranked
        challengers = [e for e in ranked if e.id != incumbent]
        survivors = math.ceil(len(challengers) / 2)
        for place, e in enumerate(challengers[survivors:], start=survivors + 1):
            done[e.id] = replace(last[e.id], status="eliminated", reason=f"successive halving: place {place} of "
                                 f"{len(challengers)} challengers; the top {survivors} go on")
        return [e for e in ranked if e.id == incumbent or e in challengers[:survivors]]

    @staticmethod
    def _ci_rule(keep: list[Info], last: dict[str, Result], done: dict[str, Result],
                 order: dict[str, int], incumbent: str) -> list[Info]:
        """Drop candidates whose SI upper bound is below the best admissible lower bound."""
        lows = [(float(low), e.id) for e in keep
                if last[e.id].admission.admissible and (low := last[e.id].si_ci.low) is not None]
        if not lows:
            return keep
        bar, holder = min(lows, key=lambda t: (-t[0], order[t[1]]))
        out = []
        for e in keep:
            high = last[e.id].si_ci.high
            if high is not None and high < bar and e.id != incumbent:
                done[e.id] = replace(last[e.id], status="eliminated",
                                     reason=f"SI upper bound {high:.3f} < best lower bound {bar:.3f} ({holder})")
            else:
                out.append(e)
        return out

    # ---------------------------------------------------------------- generations
    def run(self, on_generation: Callable[[SearchOutcome], None]) -> SearchOutcome:
        best: tuple[str, Result] | None = None
        parents = [self.out.infos[SEED_ID]]
        for g in range(self.s.generations):
            try:
                children = self._children(g, parents)
            except BudgetStop:
                self.out.stopped = True
                break
            incumbent = self.out.infos[best[0]] if best else self.out.infos[SEED_ID]
            entrants = [incumbent, *children]
            self.progress(f"generation {g + 1}/{self.s.generations}: {incumbent.id} against {len(children)} children")
            results, stopped = self._race(entrants)
            for e in entrants:
                if e.id in results and e.id not in self.out.results:
                    self.out.results[e.id] = results[e.id]
            best = self._update_best(best, results)
            self.out.generations.append(self._summary(g, entrants, results, best, stopped))
            on_generation(self.out)
            if stopped:
                self.out.stopped = True
                break
            parents = self._parents(entrants, results) or parents
        self._choose_best(best)
        return self.out

    def _update_best(self, best: tuple[str, Result] | None, results: dict[str, Result]) -> tuple[str, Result] | None:
        """The admissible finalist with the highest SI on all selection prompts (earlier id on ties)."""
        for cid, r in sorted(results.items(), key=lambda t: (-t[1].si, self.order[t[0]])):
            if r.status == "finalist" and r.admission.admissible and (best is None or r.si > best[1].si):
                return cid, r
        return best

    def _parents(self, entrants: list[Info], results: dict[str, Result]) -> list[Info]:
        """The two best admissible entrants: furthest in the race first, then by SI."""
        measured = [e for e in entrants if e.id in results and results[e.id].admission.admissible]
        measured.sort(key=lambda e: (-results[e.id].n_prompts, -results[e.id].si, self.order[e.id]))
        return measured[:2]

    def _summary(self, g: int, entrants: list[Info], results: dict[str, Result],
                 best: tuple[str, Result] | None, stopped: bool) -> dict[str, Any]:
        finalists = sorted((cid for cid, r in results.items() if r.status == "finalist" and r.admission.admissible),
                           key=lambda c: (-results[c].si, self.order[c]))
        top = finalists[0] if finalists else None
        entry: dict[str, Any] = {"generation": g, "entrants": [e.id for e in entrants], "stopped": stopped,
                                 "model_calls": dict(self.evaluator.model_calls)}
        entry["top"] = _numbers(top, results[top]) if top else None
        entry["best_so_far"] = _numbers(best[0], best[1]) if best else None
        return entry

    def _choose_best(self, best: tuple[str, Result] | None) -> None:
        if best is not None:
            self.out.best, self.out.best_on_all_prompts = best[0], True
            return
        admissible = [(cid, r) for cid, r in self.out.results.items() if r.admission.admissible]
        if admissible:
            self.out.best = min(admissible, key=lambda t: (-t[1].n_prompts, -t[1].si, self.order[t[0]]))[0]


def _groups(alive: list[Info], new_prompts: int) -> list[list[Info]]:
    """Consecutive candidates whose distinct variant texts x new prompts fit one model call.

    Children share their parent's unchanged variants, so a group of 8 children of one parent
    holds about 9 distinct texts for K = 2. The grouping depends only on the texts (never on
    what the cache holds), so a resumed run makes exactly the calls an uninterrupted one did.
    """
    groups: list[list[Info]] = []
    texts: set[str] = set()
    for info in alive:
        if groups and len(texts | set(info.texts)) * new_prompts <= SEQUENCES_PER_GROUP:
            groups[-1].append(info)
            texts |= set(info.texts)
        else:
            groups.append([info])
            texts = set(info.texts)
    return groups


def _numbers(cid: str, r: Result) -> dict[str, Any]:
    ci = None if r.si_ci.low is None else [r.si_ci.low, r.si_ci.high]
    return {"id": cid, "si": r.si, "si_ci": ci, "n_prompts": r.n_prompts, "fidelity": r.admission.fidelity}


def run_search(settings: SearchSettings, evaluator: Evaluator, seed: Candidate, pool: Sequence[str], *,
               rewriter: Rewriter | None = None, progress: Progress | None = None,
               on_generation: Callable[[SearchOutcome], None] | None = None) -> SearchOutcome:
    """Run (or replay from the cache and continue) the whole search; see the module docstring."""
    search = _Search(settings, evaluator, seed, pool, rewriter, progress or (lambda _: None))
    return search.run(on_generation or (lambda _: None))
