"""Scoring throughput: the optimised HF scorer against the naive scorer, vLLM and the hardware.

    .venv/bin/python benchmarks/bench_scoring.py                 # HF naive vs optimised, FLOP/s
    .vllm-venv/bin/python benchmarks/bench_scoring.py --vllm     # adds vLLM prompt_logprobs

Throughput is scored response tokens per second over the K x K scoring workload (K = 4,
32 prompts, R = 1, ~128-token responses). Useful FLOP/s = 2 x parameters x tokens actually
computed (each prefix once + every response token) / time, against a large bf16 matmul
measured in the same run. Prints the ratios last.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-prompts", type=int, default=8, help="naive is slow: time it on fewer prompts")
    parser.add_argument("--vllm", action="store_true", help="also time vLLM prompt_logprobs (needs vllm)")
    args = parser.parse_args()

    from si_toolkit.backends.hf import HFBackend, naive_score

    backend = HFBackend("embedded", dtype=args.dtype, device=args.device)
    k = 4
    prefixes, responses = common.workload(backend.tokenizer, k=k, n_prompts=args.n_prompts, length=args.length)
    requests = common.score_requests(prefixes, responses, k)
    scored_tokens = sum(len(r.continuation_ids) for r in requests)
    backend.score(requests[:8])  # warm-up
    t_fast, fast = common.median_time(lambda: backend.score(requests), args.repeats)

    naive_reqs = requests[: args.naive_prompts * k * k]
    naive_tokens = sum(len(r.continuation_ids) for r in naive_reqs)
    t_naive, slow = common.median_time(lambda: naive_score(backend.model, naive_reqs), args.repeats)
    max_diff = max(float(np.abs(a - b).max()) for a, b in zip(fast, slow))

    params = sum(p.numel() for p in backend.model.parameters())
    computed = sum(len(p) for p in prefixes) + scored_tokens
    useful = 2 * params * computed / t_fast
    peak = common.matmul_flops(args.dtype, device=args.device)
    result = {
        "dtype": args.dtype, "device": args.device, "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "scored_tokens": scored_tokens, "optimised_tok_per_s": scored_tokens / t_fast,
        "naive_tok_per_s": naive_tokens / t_naive, "max_abs_diff_vs_naive": max_diff,
        "useful_flops": useful, "matmul_flops": peak,
    }
    result["ratio_vs_naive"] = result["optimised_tok_per_s"] / result["naive_tok_per_s"]
    result["fraction_of_matmul_peak"] = useful / peak
    if args.vllm:
        result.update(_vllm(backend, requests, args, scored_tokens, t_fast))
    common.record("scoring", result)
    print(f"ratio optimised/naive = {result['ratio_vs_naive']:.2f}x; useful FLOP/s = "
          f"{result['fraction_of_matmul_peak']:.0%} of matmul peak"
          + (f"; optimised/vLLM = {result['ratio_vs_vllm']:.2f}x" if args.vllm else ""))


def _vllm(backend, requests, args, scored_tokens: int, t_fast: float) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=backend.resolved.path, dtype=args.dtype, max_model_len=1024, enforce_eager=True,
              gpu_memory_utilization=0.3, seed=0)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    prompts = [TokensPrompt(prompt_token_ids=list(r.prefix_ids) + list(r.continuation_ids)) for r in requests]
    llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up
    t_vllm, _ = common.median_time(lambda: llm.generate(prompts, params, use_tqdm=False), args.repeats)
    return {"vllm_tok_per_s": scored_tokens / t_vllm, "ratio_vs_vllm": t_vllm / t_fast}


if __name__ == "__main__":
    main()
