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


def test_scorer_in_many_packs_and_chunks_matches_naive(tiny_backend, monkeypatch) -> None:
    """A small token budget: prefix groups split across packs, continuations across chunks."""
    reqs = _requests(tiny_backend, n_prompts=3)
    monkeypatch.setattr(tiny_backend, "tokens_per_batch", 96)
    for a, b in zip(tiny_backend.score(reqs), naive_score(tiny_backend.model, reqs)):
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


def test_prompt_results_do_not_depend_on_batch_mates(tiny_backend) -> None:
    """Per-prompt seeds: a prompt sampled with others in one batch gets what it gets alone."""
    prompts = [render_prompt_ids(tiny_backend.tokenizer, "Be brief.", "Q" * (k + 1)) for k in range(4)]
    cfg = SamplingConfig(max_new_tokens=16, replicates=2)
    seeds = [11, 22, 33, 44]
    together = tiny_backend.generate(prompts, cfg, seeds)
    for k in range(4):
        alone = tiny_backend.generate([prompts[k]], cfg, [seeds[k]])
        assert [g.token_ids for g in alone[0]] == [g.token_ids for g in together[k]]
    assert together[0][0].token_ids != together[0][1].token_ids  # replicates draw different streams


@pytest.mark.parametrize("steps", [1, 5], ids=["decode-step", "several-tokens-go-to-sdpa"])
def test_grouped_attention_equals_sdpa(tiny_backend, steps) -> None:
    """Under the CPU attention, logits equal SDPA's after a left-padded prefix (GQA model)."""
    import torch

    from si_toolkit.backends.cpu_attention import grouped_attention
    from si_toolkit.backends.decode import cache_kwarg, output_cache

    model = tiny_backend.model
    assert model.config.num_attention_heads != model.config.num_key_value_heads  # grouped heads
    ids = torch.randint(5, 200, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    step = torch.randint(5, 200, (3, steps))

    def next_logits() -> torch.Tensor:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            return model(input_ids=step, attention_mask=torch.cat([mask, torch.ones_like(step)], 1),
                         position_ids=positions[:, -1:] + 1 + torch.arange(steps), use_cache=True,
                         **{cache_kwarg(model): output_cache(out)}).logits

    reference = next_logits()
    with grouped_attention(model, "cpu"):
        assert model.config._attn_implementation != "sdpa"
        fast = next_logits()
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [True, False], ids=["left-padded-mask", "no-mask-causal"])
def test_grouped_attention_with_gradients_equals_sdpa(tiny_backend, padded) -> None:
    """A pass that takes gradients (the trainer's) runs the CPU attention on many query tokens:
    logits and weight gradients equal SDPA's, with a padding mask or none (causal)."""
    import torch

    from si_toolkit.backends.cpu_attention import grouped_attention

    model = tiny_backend.model
    ids = torch.randint(5, 200, (3, 11))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :4] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    upstream = torch.randn(3, 11, model.config.vocab_size) * mask[..., None]  # padding is never scored

    def logits_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask if padded else None, position_ids=positions).logits
        (logits * upstream).sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    reference, reference_grads = logits_and_grads()
    with grouped_attention(model, "cpu"):
        fast, fast_grads = logits_and_grads()
    model.zero_grad(set_to_none=True)
    real = mask.bool()  # what padding positions output is unused (their keys are masked everywhere)
    torch.testing.assert_close(fast[real], reference[real], atol=1e-5, rtol=1e-5)
    assert bool(torch.isfinite(fast).all())
    assert len(fast_grads) == len(reference_grads)
    for got, want in zip(fast_grads, reference_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _draws(logits, cfg: SamplingConfig, n: int = 4000) -> np.ndarray:
    import torch

    from si_toolkit.backends.decode import sample_tokens

    generators = [torch.Generator().manual_seed(s) for s in range(n)]
    return sample_tokens(logits.expand(n, -1).clone(), cfg, generators).numpy()


def test_sampler_draws_from_the_softmax() -> None:
    import torch
    from scipy.stats import chisquare

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    for temperature in (1.0, 0.7):
        draws = _draws(logits, SamplingConfig(temperature=temperature))
        probs = torch.softmax(logits[0].double() / temperature, -1).numpy()
        expected = probs / probs.sum() * len(draws)
        observed = np.bincount(draws, minlength=6)
        assert chisquare(observed, expected).pvalue > 1e-3, (observed, expected)


def test_sampler_truncation_matches_transformers() -> None:
    """top-k and top-p keep exactly the tokens transformers' warpers keep, and draw only those."""
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)) * 2
    for cfg, warper in ((SamplingConfig(top_k=5), TopKLogitsWarper(5)), (SamplingConfig(top_p=0.6), TopPLogitsWarper(0.6))):
        kept = set(torch.nonzero(torch.isfinite(warper(None, logits.clone()))[0]).flatten().tolist())
        drawn = set(_draws(logits, cfg).tolist())
        assert drawn <= kept and len(drawn) == len(kept), (cfg, drawn, kept)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_sampling_in_a_buffer_draws_what_a_fresh_softmax_draws(dtype) -> None:
    """The decode loop builds each step's CDF in one reused float32 buffer: the probabilities are
    softmax(dtype=float32)'s bit for bit, so every configuration draws the same tokens."""
    import torch

    from si_toolkit.backends.decode import _probabilities, sample_tokens

    logits = (torch.randn(8, 49152, generator=torch.Generator().manual_seed(1)) * 4).to(getattr(torch, dtype))
    buffer = torch.full((8, 49152), float("nan"))
    assert torch.equal(_probabilities(logits, buffer), torch.softmax(logits, -1, dtype=torch.float32))
    for cfg in (SamplingConfig(), SamplingConfig(temperature=0.7, top_k=50), SamplingConfig(top_p=0.9)):
        fresh = sample_tokens(logits, cfg, [torch.Generator().manual_seed(b) for b in range(8)])
        reused = sample_tokens(logits, cfg, [torch.Generator().manual_seed(b) for b in range(8)], buffer)
        assert torch.equal(fresh, reused), cfg
    # a buffer of another shape is not used
    assert torch.equal(_probabilities(logits, torch.empty(4, 49152)), torch.softmax(logits, -1, dtype=torch.float32))


def test_shared_stems_group_rows_by_principle() -> None:
    from si_toolkit.backends.decode import MIN_SHARED_STEM, shared_stems

    template = list(range(1, 6))  # a few template tokens every prompt shares
    rows = []
    for principle in (100, 200):
        for question in range(3):
            rows.append(template + [principle] * 40 + [question + 7] * (question + 2))
    rows.append([9] * 30)  # shares nothing
    rows.append(template + [100] * 40 + [7, 7])  # a replicate of row 0: identical prompt
    stems, row_stem = shared_stems(rows)
    for b, row in enumerate(rows):
        stem = stems[row_stem[b]]
        assert row[: len(stem)] == stem and len(stem) < len(row)  # a true prefix, one token at least left
    assert row_stem[0] == row_stem[1] == row_stem[2] == row_stem[7] != row_stem[3] == row_stem[4] == row_stem[5]
    assert len(stems[row_stem[0]]) == len(template) + 40 and len(stems[row_stem[3]]) == len(template) + 40
    assert len(stems[row_stem[6]]) <= len(template) + 40  # a lone row's stem is capped by the shared ones
    assert shared_stems([[1, 2, 3], [4, 5, 6]]) == ([[], []], [0, 1])  # nothing shared: no stem pass
    assert MIN_SHARED_STEM > 5


def _sampled_with_logits(model, prompts, cfg, monkeypatch, **patches):
    """(generations, logits of every step) of sample_batch, with decode module attributes patched."""
    from si_toolkit.backends import decode

    steps = []
    sample = decode.sample_tokens

    def recording(logits, config, generators, *buffer):
        steps.append(logits.clone())
        return sample(logits, config, generators, *buffer)

    with monkeypatch.context() as patched:
        patched.setattr(decode, "sample_tokens", recording)
        for name, value in patches.items():
            patched.setattr(decode, name, value)
        gens = decode.sample_batch(model, prompts, list(range(len(prompts))), cfg, pad_id=0, eos=set(), device="cpu")
    return gens, steps


@pytest.mark.parametrize("questions", [(3, 3), (3, 1)], ids=["stems-of-equal-rows", "stems-of-unequal-rows"])
def test_stems_kept_once_equal_stems_copied_to_every_row(tiny_backend, monkeypatch, questions) -> None:
    """The stem cache (a shared stem's keys and values kept once, attention over [stem | own
    tokens]), suffixes run in groups of rows of similar length, and a cache widened a few
    positions at a time give the logits of the plain path (the stem copied into every row of one
    cache allocated for every new token, one suffix pass), at every step."""
    import torch

    from si_toolkit.backends import decode

    tok = tiny_backend.tokenizer
    # The pirate's stem is longer than the butler's whole prompt, so the stems are left-padded.
    principles = ("Be a pirate, and say arr at the start of every sentence you write. " * 4,
                  "Be a butler, sir, and answer with great and formal courtesy.")
    prompts = [render_prompt_ids(tok, principle, f"What is {q} + {q}?" + " Please." * q)
               for principle, n in zip(principles, questions) for q in range(n)]
    stems, _ = decode.shared_stems(sorted(prompts))
    assert len(stems) == 2 and min(len(s) for s in stems) >= decode.MIN_SHARED_STEM  # the stem path runs
    assert len(stems[0]) != len(stems[1])
    cfg = SamplingConfig(max_new_tokens=12)
    with torch.no_grad():
        fast, fast_logits = _sampled_with_logits(tiny_backend.model, prompts, cfg, monkeypatch, CACHE_GROWTH=4,
                                                 SUFFIX_GROUP_ROWS=2)
        plain, plain_logits = _sampled_with_logits(tiny_backend.model, prompts, cfg, monkeypatch, CACHE_GROWTH=1000,
                                                   grouped_attention_active=lambda model: False)
    assert [g.token_ids for g in fast] == [g.token_ids for g in plain]
    assert len(fast_logits) == len(plain_logits) == 12
    for got, want in zip(fast_logits, plain_logits):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("stems", [(4,), (3, 1), ()], ids=["one-stem", "stems-of-unequal-rows", "without-stems"])
def test_direct_steps_give_the_forward_logits_bit_for_bit(tiny_backend, monkeypatch, stems, autocast) -> None:
    """A Llama model's one-token steps through DirectStep (no transformers forward) give exactly
    the logits, hence the tokens, of the model's forward at every step; also under bf16 autocast,
    as the trainer's rollouts run with bf16 on."""
    import contextlib

    import torch

    from si_toolkit.backends import decode
    from si_toolkit.backends.decode_step import DirectStep

    principles = ("Be a butler, sir, and answer with great and formal courtesy. " * 3,
                  "Be a pirate, and say arr at the start of every sentence you write. " * 2)
    # Each principle's prompts share a system turn: a stem of that many rows.
    prompts = [render_prompt_ids(tiny_backend.tokenizer, principle, f"What is {q} + {q}?" + " Please." * q)
               for principle, n in zip(principles, stems) for q in range(n)]
    if not stems:  # rows that share no leading token, of different lengths (left-padded)
        prompts = [list(range(10 + q, 30 + 5 * q)) for q in range(4)]
    assert len([s for s in decode.shared_stems(sorted(prompts))[0] if s]) == len(stems)
    calls = []

    class Counted(DirectStep):
        def __call__(self, *args):
            calls.append(1)
            return super().__call__(*args)

    cfg = SamplingConfig(max_new_tokens=10)
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with precision:
        direct, direct_logits = _sampled_with_logits(tiny_backend.model, prompts, cfg, monkeypatch, CACHE_GROWTH=4,
                                                     DirectStep=Counted)
        assert len(calls) == 9  # every step after the prefill's
        forward, forward_logits = _sampled_with_logits(tiny_backend.model, prompts, cfg, monkeypatch, CACHE_GROWTH=4,
                                                       DirectStep=type("Off", (DirectStep,), {
                                                           "supported": staticmethod(lambda model, cache: False)}))
    assert direct_logits[-1].dtype == (torch.bfloat16 if autocast else torch.float32)
    assert [g.token_ids for g in direct] == [g.token_ids for g in forward]
    assert len(direct_logits) == len(forward_logits) == 10
    for got, want in zip(direct_logits, forward_logits):
        assert torch.equal(got, want)


def test_direct_steps_only_for_plain_llama_models(tiny_backend) -> None:
    """A subclass, a model in training mode or transformers' own attention keep the forward."""
    import copy

    from transformers import StaticCache

    from si_toolkit.backends.cpu_attention import grouped_attention
    from si_toolkit.backends.decode_step import DirectStep

    model = tiny_backend.model
    cache = StaticCache(config=model.config, max_cache_len=8)
    assert not DirectStep.supported(model, cache)  # SDPA attention outside grouped_attention
    with grouped_attention(model, "cpu"):
        assert DirectStep.supported(model, cache)
        subclassed = copy.copy(model)
        subclassed.__class__ = type("Custom", (type(model),), {})
        assert not DirectStep.supported(subclassed, cache)
        model.train()
        try:
            assert not DirectStep.supported(model, cache)
        finally:
            model.eval()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_linears_compute_what_linear_computes(tiny_model_dir, dtype) -> None:
    """Inside packed_linears every nn.Linear multiplies by a packed copy of its weight, with the
    same result; the plain forward is back after; passes with gradients or autocast are left alone."""
    import torch

    from si_toolkit.backends.cpu_linear import packed_linears
    from si_toolkit.models import ResolvedModel, load_causal_lm

    model = load_causal_lm(ResolvedModel(ref=str(tiny_model_dir), name="tiny", path=str(tiny_model_dir)),
                           dtype=dtype, device="cpu")
    ids = torch.randint(5, 300, (3, 7))
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert linears
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with packed_linears(model, "cpu"):
            assert all("forward" in m.__dict__ for m in linears)  # every layer packed
            got = model(input_ids=ids).logits
    assert not any("forward" in m.__dict__ for m in linears)  # restored
    assert torch.equal(got, want)  # the same oneDNN kernels: bit for bit
    with packed_linears(model, "cpu"):  # gradients enabled: plain layers
        assert not any("forward" in m.__dict__ for m in linears)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), packed_linears(model, "cpu"):
        assert not any("forward" in m.__dict__ for m in linears)


def test_greedy_is_argmax_and_independent_of_batch_mates(tiny_backend) -> None:
    import torch

    prompts = [render_prompt_ids(tiny_backend.tokenizer, "Be brief.", q) for q in ("hi there", "two plus two is what?")]
    batched = tiny_backend.greedy(prompts, 6, batch_size=2)
    alone = [tiny_backend.greedy([p], 6)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    # Each token is the argmax of a plain forward pass over the prompt and the tokens before it.
    model = tiny_backend.model
    for prompt, gen in zip(prompts, alone):
        ids = list(prompt)
        for token in gen.token_ids:
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1]
            assert token == int(logits.argmax())
            ids.append(token)
        assert gen.finish_reason == ("stop" if gen.token_ids[-1] in tiny_backend._eos_ids() else "length")
        assert gen.finish_reason == "stop" or len(gen.token_ids) == 6
