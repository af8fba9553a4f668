"""Sampling and scoring what candidates need, through the cache, and their score tensors.

For a candidate with variant texts c_1..c_K and the seed s_1..s_K, on prompts X:

- responses y_{j,r} ~ π(· | x, c_j) at T = 1, untruncated (SI-SPEC §1), and the seed's own;
- L[x, i, j, r]     = log π(y_{j,r} | x, c_i) on the cot span: the candidate's SI (SI-SPEC §4);
- L_fid[x, i, j, r] = log π(y_{j,r} | x, s_i): its seed fidelity (SI-SPEC §7);
- L_seed            = the seed's responses under the seed: the seed's accuracy, the reference.

Rendering, seeds, span sums and the tensors come from the rank machinery (`si_toolkit.rank`,
`si_toolkit.tensors`); every number from `si_toolkit.estimators`. Every prompt's sampling seed
depends only on the run seed and the prompt id (common random numbers: candidates are compared
on the same random streams), so what a variant draws does not depend on which candidate asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from si_toolkit import estimators as est
from si_toolkit.backends import Backend, SamplingConfig, ScoreRequest
from si_toolkit.chat import parse_response
from si_toolkit.errors import SIError
from si_toolkit.evolve.cache import EvalCache, Sample, SampleKey, ScoreKey, SpanScores, text_key
from si_toolkit.chat import render_unit_prompts
from si_toolkit.rank import check_context, span_sums, unit_seed
from si_toolkit.tensors import SCORE_COLUMNS, score_tensor

__all__ = ["Budget", "BudgetStop", "Measurement", "Evaluator"]

FloatArray = npt.NDArray[np.float64]
Texts = tuple[str, ...]


class BudgetStop(Exception):
    """Raised before model work once the time budget is spent (never a user error)."""


class Budget:
    """Wall-clock budget of one invocation; None = unlimited. Cached work costs nothing."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.start = time.monotonic()
        self.stopped = False

    def check(self) -> None:
        """Call before model work: raises BudgetStop once the budget is spent."""
        if self.minutes is not None and time.monotonic() - self.start > self.minutes * 60.0:
            self.stopped = True
            raise BudgetStop()


@dataclass(frozen=True)
class Measurement:
    """A candidate on a set of prompts: per-prompt values, prompts in `prompt_ids` order."""

    prompt_ids: tuple[str, ...]
    si: FloatArray  # (n,) SI(x), cot span, summed critic
    fidelity: FloatArray  # (n,) seed fidelity per prompt
    fidelity_per_variant: FloatArray  # (K,)
    seed_accuracy: FloatArray  # (n,) the seed's own tie-aware accuracy on the same prompts
    format_rate: float


class Evaluator:
    """Fills the cache with the samples and scores candidates need; measures them from it."""

    def __init__(self, *, cache: EvalCache, prompts: Mapping[str, str], seed_texts: Texts,
                 sampling: SamplingConfig, prefill: bool, backend: Callable[[], Backend], budget: Budget) -> None:
        self.cache = cache
        self.prompts = prompts
        self.seed_texts = seed_texts
        self.sampling = sampling
        self.prefill = prefill
        self._backend = backend
        self.budget = budget
        self._rendered: dict[tuple[str, str], list[int]] = {}
        self.model_calls = {"generate": 0, "score": 0}

    # ---------------------------------------------------------------- what is needed
    def _responses(self, texts: Texts, prompt_ids: Sequence[str]) -> list[tuple[str, SampleKey]]:
        reps = range(self.sampling.replicates)
        return [(t, (text_key(t), p, r)) for t in dict.fromkeys(texts) for p in prompt_ids for r in reps]

    def _needed_scores(self, candidates: Sequence[Texts], prompt_ids: Sequence[str]) -> dict[ScoreKey, str]:
        """Score key -> condition text, for every tensor `measure` builds."""
        need: dict[ScoreKey, str] = {}
        for texts, conditions in self._tensor_specs(candidates):
            for _, key in self._responses(texts, prompt_ids):
                for cond in conditions:
                    need.setdefault((*key, text_key(cond)), cond)
        return need

    def _tensor_specs(self, candidates: Sequence[Texts]) -> list[tuple[Texts, Texts]]:
        """(response texts, condition texts) of the candidate, fidelity and seed tensors."""
        specs = [(self.seed_texts, self.seed_texts)]
        for texts in candidates:
            specs += [(texts, texts), (texts, self.seed_texts)]
        return specs

    def needs_work(self, candidates: Sequence[Texts], prompt_ids: Sequence[str]) -> bool:
        all_texts = [self.seed_texts, *candidates]
        if any(k not in self.cache.samples for t in all_texts for _, k in self._responses(t, prompt_ids)):
            return True
        return any(k not in self.cache.scores for k in self._needed_scores(candidates, prompt_ids))

    # ---------------------------------------------------------------- model work
    def fill(self, candidates: Sequence[Texts], prompt_ids: Sequence[str]) -> None:
        """Sample, then score, whatever `measure` will need and the cache lacks (one call each)."""
        if not self.needs_work(candidates, prompt_ids):
            return
        self.budget.check()
        backend = self._backend()
        self._sample(backend, [self.seed_texts, *candidates], prompt_ids)
        self._score(backend, self._needed_scores(candidates, prompt_ids))

    def _ids(self, backend: Backend, text: str, prompt_id: str) -> list[int]:
        key = (text_key(text), prompt_id)
        if key not in self._rendered:
            rendered = render_unit_prompts(backend.tokenizer, [text], [{"id": prompt_id, "text": self.prompts[prompt_id]}],
                                           prefill=self.prefill)
            check_context(backend, "the candidate", rendered, self.sampling)
            self._rendered[key] = rendered[(prompt_id, 0)]
        return self._rendered[key]

    def _sample(self, backend: Backend, all_texts: Sequence[Texts], prompt_ids: Sequence[str]) -> None:
        todo: dict[tuple[str, str], str] = {}  # (variant hash, prompt id) -> text
        for texts in all_texts:
            for text, (vh, p, _) in self._responses(texts, prompt_ids):
                if any((vh, p, r) not in self.cache.samples for r in range(self.sampling.replicates)):
                    todo.setdefault((vh, p), text)
        if not todo:
            return
        order = list(todo)
        ids = [self._ids(backend, todo[k], k[1]) for k in order]
        seeds = [unit_seed(self.sampling.seed, "evolve", p) for _, p in order]
        generations = backend.generate(ids, self.sampling, seeds)
        self.model_calls["generate"] += len(order) * self.sampling.replicates
        new: dict[SampleKey, Sample] = {}
        for (vh, p), replicas in zip(order, generations, strict=True):
            for r, gen in enumerate(replicas):
                parsed = parse_response(backend.tokenizer, gen.token_ids, prefill=self.prefill)
                new[(vh, p, r)] = Sample(tuple(gen.token_ids), parsed.text, parsed.cot_end, parsed.n_tokens,
                                         parsed.format_ok, gen.finish_reason)
        self.cache.add_samples(new)

    def _score(self, backend: Backend, need: dict[ScoreKey, str]) -> None:
        keys = [k for k in need if k not in self.cache.scores]
        if not keys:
            return
        requests = []
        for vh, p, r, _ in keys:
            sample = self.cache.samples[(vh, p, r)]
            requests.append(ScoreRequest(tuple(self._ids(backend, need[(vh, p, r, _)], p)), sample.token_ids))
        logprobs = backend.score(requests)
        self.model_calls["score"] += len(requests)
        new = {}
        for key, lp in zip(keys, logprobs, strict=True):
            spans = span_sums(np.asarray(lp, dtype=np.float64), self.cache.samples[key[:3]].cot_end)
            new[key] = SpanScores(spans["cot"][0], spans["cot"][1], spans["full"][0], spans["full"][1])
        self.cache.add_scores(new)

    # ---------------------------------------------------------------- measuring (cache only)
    def tensor(self, responses: Texts, conditions: Texts, prompt_ids: Sequence[str]) -> tuple[list[str], FloatArray]:
        """L[x, i, j, r] (cot span, summed critic) of responses under conditions, from the cache."""
        rows = []
        for j, text in enumerate(responses):
            vh = text_key(text)
            for p in prompt_ids:
                for r in range(self.sampling.replicates):
                    for i, cond in enumerate(conditions):
                        s = self.cache.scores.get((vh, p, r, text_key(cond)))
                        if s is None:
                            raise RuntimeError(f"score missing for prompt {p!r}: fill() before measure()")
                        rows.append(("c", p, i, j, r, "cot", s.logp_cot, s.n_cot))
        t = score_tensor(pd.DataFrame(rows, columns=list(SCORE_COLUMNS)), "c", "cot", k=len(conditions))
        return t.prompt_ids, t.L

    def measure(self, texts: Texts, prompt_ids: Sequence[str]) -> Measurement:
        if len(texts) != len(self.seed_texts):
            raise SIError(f"a candidate has {len(texts)} variants, the seed {len(self.seed_texts)}")
        ids, L = self.tensor(texts, texts, prompt_ids)
        _, L_fid = self.tensor(texts, self.seed_texts, prompt_ids)
        _, L_seed = self.tensor(self.seed_texts, self.seed_texts, prompt_ids)
        formats = [self.cache.samples[k].format_ok for _, k in self._responses(texts, prompt_ids)]
        return Measurement(prompt_ids=tuple(ids), si=est.si_per_prompt(L),
                           fidelity=est.seed_fidelity_per_prompt(L_fid),
                           fidelity_per_variant=est.per_variant_fidelity(L_fid),
                           seed_accuracy=est.seed_fidelity_per_prompt(L_seed),
                           format_rate=float(np.mean(formats)))
