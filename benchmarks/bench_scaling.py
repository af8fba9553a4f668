"""How ranking time grows with K, R, n prompts and response length: measured against K²·R·n·L.

    .venv/bin/python benchmarks/bench_scaling.py

From a base configuration (K = 2, R = 1, n = 4 prompts, L = 64 response tokens) each factor is
doubled alone, and the script times the two stages on the embedded model:

* scoring (`HFBackend.score`, the K×K workload of bench_scoring.py): K²·R·n responses of L
  tokens, plus one prefix pass per (condition, prompt), i.e. K·n prefixes;
* sampling (`decode.sample_batch`, the loop `si sample` runs): K·R·n sequences of exactly L
  tokens (EOS ignored).

Each row gives the time relative to the base and two predictions: the naive K²·R·n·L (sampling:
K·R·n·L) and the token count the code actually computes (prefixes once + every response
token). Prints the table last; one JSON line per run goes to results.jsonl.
"""

from __future__ import annotations

import argparse

import common

BASE = {"k": 2, "replicates": 1, "n_prompts": 4, "length": 64}


def configs() -> list[tuple[str, dict[str, int]]]:
    rows = [("base", dict(BASE))]
    for name, key in (("K x2", "k"), ("R x2", "replicates"), ("n x2", "n_prompts"), ("L x2", "length")):
        rows.append((name, {**BASE, key: BASE[key] * 2}))
    return rows


def measure(backend, cfg: dict[str, int], repeats: int) -> dict[str, float]:
    from si_toolkit.backends.base import SamplingConfig, prompt_seeds
    from si_toolkit.backends.decode import sample_batch

    k = cfg["k"]
    prefixes, responses = common.workload(backend.tokenizer, k=k, n_prompts=cfg["n_prompts"],
                                          replicates=cfg["replicates"], length=cfg["length"])
    requests = common.score_requests(prefixes, responses, k)
    t_score, _ = common.median_time(lambda: backend.score(requests), repeats)
    rows = [p for p in prefixes for _ in range(cfg["replicates"])]
    seeds = prompt_seeds(0, len(rows))
    config = SamplingConfig(max_new_tokens=cfg["length"])
    t_sample, _ = common.median_time(
        lambda: sample_batch(backend.model, rows, seeds, config, pad_id=backend._pad_id, eos=set(), device="cpu"),
        repeats)
    return {
        "score_s": t_score, "sample_s": t_sample,
        "score_tokens": sum(len(p) for p in prefixes) + sum(len(r.continuation_ids) for r in requests),
        "sample_tokens": sum(len(p) for p in rows) + len(rows) * cfg["length"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from si_toolkit.backends.hf import HFBackend

    backend = HFBackend("embedded", dtype="bfloat16", device="cpu")
    backend.score(common.score_requests(*common.workload(backend.tokenizer, k=2, n_prompts=1, length=8), 2))  # warm-up
    results = [(name, cfg, measure(backend, cfg, args.repeats)) for name, cfg in configs()]
    base_cfg, base = results[0][1], results[0][2]

    def naive(cfg: dict[str, int], power_k: int) -> float:
        return (cfg["k"] ** power_k * cfg["replicates"] * cfg["n_prompts"] * cfg["length"]) / (
            base_cfg["k"] ** power_k * base_cfg["replicates"] * base_cfg["n_prompts"] * base_cfg["length"])

    table = []
    for name, cfg, m in results:
        table.append({
            "config": name, **cfg, "score_s": m["score_s"], "sample_s": m["sample_s"],
            "score_ratio": m["score_s"] / base["score_s"], "score_pred_k2rnl": naive(cfg, 2),
            "score_pred_tokens": m["score_tokens"] / base["score_tokens"],
            "sample_ratio": m["sample_s"] / base["sample_s"], "sample_pred_krnl": naive(cfg, 1),
            "sample_pred_tokens": m["sample_tokens"] / base["sample_tokens"],
        })
    common.record("scaling", {"repeats": args.repeats, "table": table})
    print("| config | K | R | n | L | scoring s | x base | K²RnL | tokens | sampling s | x base | KRnL | tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['config']} | {row['k']} | {row['replicates']} | {row['n_prompts']} | {row['length']} | "
              f"{row['score_s']:.2f} | {row['score_ratio']:.2f} | {row['score_pred_k2rnl']:.2f} | "
              f"{row['score_pred_tokens']:.2f} | {row['sample_s']:.2f} | {row['sample_ratio']:.2f} | "
              f"{row['sample_pred_krnl']:.2f} | {row['sample_pred_tokens']:.2f} |")


if __name__ == "__main__":
    main()
