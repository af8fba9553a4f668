"""Shared set-up for the benchmark scripts: the workload and small timing helpers.

The workload follows the performance targets: K = 4 variants of realistic principle text,
n prompts from the built-in set, R responses of about `length` tokens each. Responses are
fixed random token ids (seeded): scoring cost depends on lengths, not on which tokens they are,
and fixed ids let every scorer (naive, optimised, vLLM) see exactly the same input.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def variants(k: int = 4) -> list[str]:
    from si_toolkit.principles import load_principle_set

    texts = [v.text for v in load_principle_set(ROOT / "principles/editorial-standards.yaml").variants]
    return texts[:k]


def workload(tokenizer: Any, *, k: int = 4, n_prompts: int = 32, replicates: int = 1, length: int = 128,
             seed: int = 0) -> tuple[list[list[int]], list[list[tuple[int, ...]]]]:
    """(prefixes[x*k + i], responses[x] = the k*R responses of prompt x, random ids of length ± 16).

    length must be at least 1."""
    from si_toolkit.chat import render_prompt_ids
    from si_toolkit.prompts import load_prompts

    rng = np.random.default_rng(seed)
    prompts = load_prompts("builtin:mixed", n=n_prompts).prompts
    texts = variants(k)
    prefixes = [render_prompt_ids(tokenizer, t, p.text) for p in prompts for t in texts]
    vocab = len(tokenizer)
    spread = min(16, length - 1)  # responses of length ± 16 tokens, never empty
    responses = [
        [tuple(int(t) for t in rng.integers(100, vocab - 1,
                                            size=int(rng.integers(length - spread, length + spread + 1))))
         for _ in range(k * replicates)]
        for _ in prompts
    ]
    return prefixes, responses


def score_requests(prefixes: list[list[int]], responses: list[list[tuple[int, ...]]], k: int) -> list[Any]:
    from si_toolkit.backends.base import ScoreRequest

    return [ScoreRequest(tuple(prefixes[x * k + i]), y) for x in range(len(responses)) for i in range(k)
            for y in responses[x]]


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def matmul_flops(dtype: str = "bfloat16", size: int | None = None, repeats: int = 5, device: str = "cpu") -> float:
    """This machine's dense matmul throughput (FLOP/s) with torch, the ceiling for useful FLOP/s.

    2048^2 saturates a CPU; a GPU needs 8192^2 to reach its peak."""
    import torch

    size = size or (8192 if device.startswith("cuda") else 2048)
    dt = getattr(torch, dtype)
    a, b = torch.randn(size, size, dtype=dt, device=device), torch.randn(size, size, dtype=dt, device=device)
    a @ b  # warm-up
    seconds, _ = median_time(lambda: synchronized(a @ b), repeats)
    return 2 * size**3 / seconds


def synchronized(result: Any) -> Any:
    """Wait for queued GPU work, so a timer around it measures the work (a no-op on CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return result


def machine() -> str:
    import os

    import torch

    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def record(name: str, result: dict[str, Any]) -> None:
    """Append one result line to benchmarks/results.jsonl (the table in README is built from it)."""
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **result}
    with (ROOT / "benchmarks/results.jsonl").open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))
