"""Build the score tensor L of SI-SPEC §2 from the rows of `scores.parquet`.

`scores.parquet` (docs/run-folder.md) holds one row per (set, prompt_id, condition i,
variant j, replicate r, span) with `logp_sum` (nats) and `n_tokens`. For one set and span,
`score_tensor` arranges them as L[x, i, j, r] and n_tokens[x, j, r] for `estimators.py`, and
refuses a broken run (missing, duplicate or non-finite rows) with an `SIError` that names the
rows, because estimating from a partial grid would silently bias every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args
import numpy as np
import numpy.typing as npt

from si_toolkit.errors import SIError

if TYPE_CHECKING:  # pandas is imported where a table is read: `si train` needs only Span and never loads it
    import pandas as pd

__all__ = ["SCORE_COLUMNS", "SPANS", "Span", "ScoreTensor", "score_tensor"]

SCORE_COLUMNS = ("set", "prompt_id", "condition", "variant", "replicate", "span", "logp_sum", "n_tokens")
Span = Literal["cot", "answer", "full"]  # SI-SPEC §1: the one list of span names
SPANS: tuple[str, ...] = get_args(Span)
_CELL = ["condition", "variant", "replicate"]
_MAX_NAMED = 5  # how many offending rows an error message lists
_RERUN = "rerun `si score` on this run folder to recompute them"


@dataclass(frozen=True)
class ScoreTensor:
    """The scores of one set and span, arranged for the estimators.

    prompt_ids: the n prompt ids, sorted; index x of the arrays.
    L: (n, K, K, R) float64 nats, L[x, i, j, r] = log π(y_{j,r} | x, c_i) over the span.
    n_tokens: (n, K, R) int64 tokens of response (j, r) in the span.
    """

    prompt_ids: list[str]
    L: npt.NDArray[np.float64]
    n_tokens: npt.NDArray[np.int64]


def _rows_text(rows: pd.DataFrame, columns: list[str]) -> str:
    """Name up to _MAX_NAMED rows as 'col=value, ...' for an error message."""
    named = "; ".join(
        ", ".join(f"{c}={row[c]!r}" for c in columns) for _, row in rows.head(_MAX_NAMED).iterrows()
    )
    more = f" (and {len(rows) - _MAX_NAMED} more)" if len(rows) > _MAX_NAMED else ""
    return named + more


def _select(df: pd.DataFrame, set_name: str, span: str) -> pd.DataFrame:
    """The rows of one set and span, with integer index columns; SIError when unusable."""
    import pandas as pd

    missing = [c for c in SCORE_COLUMNS if c not in df.columns]
    if missing:
        raise SIError(f"scores: column(s) {missing} missing; expected {list(SCORE_COLUMNS)} "
                      "(docs/run-folder.md); rerun `si score`")
    if span not in SPANS:
        raise SIError(f"span = {span!r} is not one of {list(SPANS)}")
    rows = df[(df["set"] == set_name) & (df["span"] == span)]
    if rows.empty:
        raise SIError(f"scores: no rows for set {set_name!r}, span {span!r}; run `si score` first")
    rows = rows.reset_index(drop=True)
    for col in [*_CELL, "n_tokens"]:
        if not pd.api.types.is_integer_dtype(rows[col]):
            raise SIError(f"scores: column {col!r} must hold integers, got {rows[col].dtype}")
    return rows


def _check_ranges(rows: pd.DataFrame, set_name: str, k: int) -> None:
    bad = rows[(rows["condition"] < 0) | (rows["condition"] >= k) | (rows["variant"] < 0)
               | (rows["variant"] >= k) | (rows["replicate"] < 0) | (rows["n_tokens"] < 0)]
    if len(bad):
        raise SIError(f"scores of set {set_name!r}: rows outside condition/variant 0..{k - 1}, "
                      f"replicate >= 0, n_tokens >= 0: {_rows_text(bad, ['prompt_id', *_CELL, 'n_tokens'])}")


def _check_duplicates(rows: pd.DataFrame, set_name: str, span: str) -> None:
    dup = rows[rows.duplicated(["prompt_id", *_CELL], keep=False)]
    if len(dup):
        raise SIError(f"scores of set {set_name!r}, span {span!r} have duplicate rows: "
                      f"{_rows_text(dup, ['prompt_id', *_CELL])}; the run folder is corrupt, "
                      "rerun `si score` into a fresh run folder")


def _check_finite(rows: pd.DataFrame, set_name: str, span: str) -> None:
    import pandas as pd

    logp = pd.to_numeric(rows["logp_sum"], errors="coerce").to_numpy(dtype=np.float64)
    bad = rows[~np.isfinite(logp)]
    if len(bad):
        raise SIError(f"scores have non-finite logp_sum at set={set_name!r}, span={span!r}: "
                      f"{_rows_text(bad, ['prompt_id', *_CELL, 'logp_sum'])}; {_RERUN}")


def _missing_cells(filled: npt.NDArray[np.bool_], prompt_ids: list[str]) -> list[str]:
    """Describe each prompt whose K×K×R grid is incomplete: prompt id and its first holes."""
    out = []
    for x in np.flatnonzero(~filled.all(axis=(1, 2, 3))):
        holes = np.argwhere(~filled[x])
        cells = ", ".join(f"(condition {i}, variant {j}, replicate {r})" for i, j, r in holes[:3])
        more = f" and {len(holes) - 3} more" if len(holes) > 3 else ""
        out.append(f"prompt {prompt_ids[x]!r} lacks {cells}{more}")
    return out


def _check_token_counts(counts: npt.NDArray[np.int64], prompt_ids: list[str], where: str) -> None:
    """n_tokens of response (j, r) must not depend on the condition i that scored it."""
    differs = (counts != counts[:, :1]).any(axis=1)  # (n, K, R)
    bad = np.argwhere(differs)
    if len(bad):
        named = "; ".join(f"prompt {prompt_ids[x]!r}, variant {j}, replicate {r}: "
                          f"{sorted(set(counts[x, :, j, r].tolist()))}" for x, j, r in bad[:_MAX_NAMED])
        raise SIError(f"{where}: n_tokens differs across conditions for the same response ({named}); "
                      f"every condition scores the same token ids; {_RERUN}")


def score_tensor(df: pd.DataFrame, set_name: str, span: str, *, k: int | None = None) -> ScoreTensor:
    """Arrange the scores of one set and span as L: (n, K, K, R) and n_tokens: (n, K, R).

    df: the scores table (columns SCORE_COLUMNS). k: the set's K from the manifest; when None
    it is inferred as 1 + the largest condition/variant index. R = 1 + the largest replicate.
    Raises SIError (naming the set, prompts and cells) on missing columns, no rows, indices out
    of range, duplicate rows, an incomplete K×K×R grid for any prompt, non-finite logp_sum, or
    n_tokens that differ across conditions for one response.
    """
    import pandas as pd

    rows = _select(df, set_name, span)
    k_found = int(max(rows["condition"].max(), rows["variant"].max())) + 1
    k = k_found if k is None else k
    _check_ranges(rows, set_name, k)
    _check_duplicates(rows, set_name, span)
    _check_finite(rows, set_name, span)
    prompt_ids = sorted(str(p) for p in rows["prompt_id"].unique())
    n_rep = int(rows["replicate"].max()) + 1
    x = pd.Categorical(rows["prompt_id"].astype(str), categories=prompt_ids).codes
    i, j, r = (rows[c].to_numpy(dtype=np.int64) for c in _CELL)
    shape = (len(prompt_ids), k, k, n_rep)
    L = np.zeros(shape, dtype=np.float64)
    counts = np.zeros(shape, dtype=np.int64)
    filled = np.zeros(shape, dtype=bool)
    L[x, i, j, r] = rows["logp_sum"].to_numpy(dtype=np.float64)
    counts[x, i, j, r] = rows["n_tokens"].to_numpy(dtype=np.int64)
    filled[x, i, j, r] = True
    where = f"scores of set {set_name!r}, span {span!r}"
    holes = _missing_cells(filled, prompt_ids)
    if holes:
        more = f" (and {len(holes) - _MAX_NAMED} more prompts)" if len(holes) > _MAX_NAMED else ""
        raise SIError(f"{where}: incomplete grid (K={k} conditions x {k} variants x R={n_rep} "
                      f"replicates per prompt): {'; '.join(holes[:_MAX_NAMED])}{more}; "
                      "rerun `si score` to finish the run")
    _check_token_counts(counts, prompt_ids, where)
    return ScoreTensor(prompt_ids, L, counts[:, 0, :, :].copy())
