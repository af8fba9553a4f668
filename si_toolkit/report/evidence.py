"""Evidence for the report: the chains of thought the estimator identified most and least surely.

For each response (j, r) of a prompt, the log posterior of its true variant on the `cot` span
with the summed critic is (SI-SPEC §3)

    ℓ(j, r) = L[j, (j, r)] − logsumexp_i L[i, (j, r)]          (nats, ≤ 0)

so exp(ℓ) is the posterior probability p(c_j | COT, x) under the uniform prior. The responses
with the largest ℓ show what in the reasoning carries the principle; the smallest show where
it does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from si_toolkit.estimators import log_posterior_true
from si_toolkit.tensors import score_tensor

__all__ = ["Evidence", "response_log_posteriors", "select_evidence", "cot_text", "MAX_COT_CHARS"]

MAX_COT_CHARS = 1200  # characters of a chain of thought shown per example; longer ones are cut


@dataclass(frozen=True)
class Evidence:
    """One shown response: where it came from, how surely it was identified, and its CoT."""

    variant: int
    label: str
    prompt_id: str
    replicate: int
    kind: str  # "most" or "least" confidently identified within its variant
    log_post: float  # ℓ, nats
    cot: str  # the chain of thought, cut to MAX_COT_CHARS
    cot_chars: int  # length before cutting
    format_ok: bool
    prompt: str = ""  # the prompt's text, filled in from manifest.json when known


def response_log_posteriors(scores: pd.DataFrame, set_name: str, k: int) -> pd.DataFrame:
    """ℓ = L[j,(j,r)] − logsumexp_i L[i,(j,r)] for every response of one set (cot span, summed critic).

    Parameters
    ----------
    scores : the rows of scores.parquet (columns `tensors.SCORE_COLUMNS`); only `cot` is used.
    set_name : the set whose responses to score.
    k : the set's K.

    Returns
    -------
    DataFrame with columns prompt_id, variant, replicate, log_post (nats, ≤ 0), one row per
    response. The tensor is built by `tensors.score_tensor` and ℓ by
    `estimators.log_posterior_true`, the functions behind the estimates themselves; an
    incomplete or broken score grid raises their SIError.
    """
    tensor = score_tensor(scores, set_name, "cot", k=k)
    ell = log_posterior_true(tensor.L)  # (n, K, R)
    x, j, r = np.meshgrid(*(np.arange(size) for size in ell.shape), indexing="ij")  # each (n, K, R)
    return pd.DataFrame({
        "prompt_id": np.asarray(tensor.prompt_ids, dtype=object)[x.ravel()],
        "variant": j.ravel().astype(np.int64),
        "replicate": r.ravel().astype(np.int64),
        "log_post": ell.ravel(),
    })


def cot_text(text: str) -> str:
    """The chain of thought of a decoded response, as the `cot` span defines it (SI-SPEC §1).

    Up to and including `</think>` when present; else up to `<answer>` when present (broken
    format); else the whole response.
    """
    end = text.find("</think>")
    if end >= 0:
        return text[: end + len("</think>")]
    end = text.find("<answer>")
    return text[:end] if end >= 0 else text


def select_evidence(
    log_post: pd.DataFrame, samples: pd.DataFrame, set_name: str, n_most: int, n_least: int
) -> list[Evidence]:
    """Pick, per variant, the `n_most` highest-ℓ and `n_least` lowest-ℓ responses with their CoT.

    `samples` is samples.parquet (columns set, prompt_id, variant, variant_label, replicate,
    text, format_ok). Ties in ℓ are broken by (prompt_id, replicate) so the choice is stable.
    A response is shown at most once per variant.
    """
    key = ["prompt_id", "variant", "replicate"]
    texts = samples[samples["set"] == set_name]
    merged = log_post.merge(texts, on=key, how="inner")
    chosen: list[Evidence] = []
    for variant, group in merged.groupby("variant", sort=True):
        ordered = group.sort_values(["log_post", "prompt_id", "replicate"], ascending=[False, True, True])
        most = ordered.head(n_most)
        rest = ordered.iloc[len(most):]
        least = rest.tail(n_least).iloc[::-1] if n_least > 0 else rest.iloc[0:0]
        for kind, part in (("most", most), ("least", least)):
            chosen.extend(_to_evidence(row, kind) for row in part.itertuples(index=False))
    return chosen


def _to_evidence(row: object, kind: str) -> Evidence:
    full = cot_text(str(getattr(row, "text")))
    return Evidence(
        variant=int(getattr(row, "variant")),
        label=str(getattr(row, "variant_label")),
        prompt_id=str(getattr(row, "prompt_id")),
        replicate=int(getattr(row, "replicate")),
        kind=kind,
        log_post=float(getattr(row, "log_post")),
        cot=full[:MAX_COT_CHARS],
        cot_chars=len(full),
        format_ok=bool(getattr(row, "format_ok")),
    )
