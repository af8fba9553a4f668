"""The transformers backend: the prefix-sharing scorer equals the naive scorer; sampling is seeded."""

from __future__ import annotations

import numpy as np
import pytest

from si_toolkit.backends.base import SamplingConfig, ScoreRequest
from si_toolkit.backends.hf import naive_score
from si_toolkit.chat import render_prompt_ids
from si_toolkit.errors import SIError


def _requests(backend, n_prompts: int = 2, max_new_tokens: int = 20) -> list[ScoreRequest]:
    tok = backend.tokenizer
    prefixes = [render_prompt_ids(tok, v, f"What is {k} + 2?") for k in range(n_prompts) for v in ("Be a pirate.", "Be a butler, sir.")]
    gens = backend.generate(prefixes, SamplingConfig(max_new_tokens=max_new_tokens, replicates=2), seed=0)
    conts = [tuple(g.token_ids) for per in gens for g in per]
    return [ScoreRequest(tuple(p), c) for p in prefixes for c in conts]


def test_optimised_scorer_matches_naive_fp32(tiny_backend) -> None:
    reqs = _requests(tiny_backend)
    fast = tiny_backend.score(reqs)
    slow = naive_score(tiny_backend.model, reqs)
    assert [len(a) for a in fast] == [len(r.continuation_ids) for r in reqs]
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_scorer_handles_single_token_and_mixed_lengths(tiny_backend) -> None:
    prefix = tuple(render_prompt_ids(tiny_backend.tokenizer, "x", "y"))
    reqs = [ScoreRequest(prefix, (5,)), ScoreRequest(prefix, (5, 6, 7, 8, 9, 10)), ScoreRequest(prefix, (11, 12))]
    for a, b in zip(tiny_backend.score(reqs), naive_score(tiny_backend.model, reqs)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_generation_is_seeded_and_batch_shaped(tiny_backend) -> None:
    prompts = [render_prompt_ids(tiny_backend.tokenizer, "Be brief.", f"Q{k}") for k in range(3)]
    cfg = SamplingConfig(max_new_tokens=12, replicates=2)
    first = tiny_backend.generate(prompts, cfg, seed=7)
    again = tiny_backend.generate(prompts, cfg, seed=7)
    other = tiny_backend.generate(prompts, cfg, seed=8)
    ids = lambda gens: [g.token_ids for per in gens for g in per]  # noqa: E731
    assert len(first) == 3 and all(len(per) == 2 for per in first)
    assert ids(first) == ids(again) and ids(first) != ids(other)
    for per in first:
        for g in per:
            eos = tiny_backend.tokenizer.eos_token_id
            assert (g.finish_reason == "stop") == (eos in g.token_ids)
            assert eos not in g.token_ids[:-1]  # cut right after the first EOS
            assert g.finish_reason == "stop" or len(g.token_ids) == 12


def test_sampling_config_validation() -> None:
    assert SamplingConfig().is_exact
    assert not SamplingConfig(top_p=0.9).is_exact
    for bad in ({"temperature": 0}, {"top_p": 1.5}, {"top_k": -1}, {"replicates": 0}, {"max_new_tokens": 0}):
        with pytest.raises(SIError):
            SamplingConfig(**bad)


def test_models_with_logit_softcapping_fall_back_to_full_forwards(tiny_backend, monkeypatch) -> None:
    reqs = _requests(tiny_backend, n_prompts=1, max_new_tokens=6)[:2]
    monkeypatch.setattr(tiny_backend.model.config, "final_logit_softcapping", 30.0, raising=False)
    calls = []
    import si_toolkit.backends.hf as hf

    real = hf.naive_score
    monkeypatch.setattr(hf, "naive_score", lambda model, r: calls.append(len(r)) or real(model, r))
    tiny_backend.score(reqs)
    assert calls == [2]
