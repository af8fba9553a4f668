"""Tests of si_toolkit.tensors: scores table -> score tensor, and refusal of broken runs."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from si_toolkit.errors import SIError
from si_toolkit.tensors import ScoreTensor, score_tensor

Grid = tuple[np.ndarray, np.ndarray, list[str]]  # L (n, K, K, R), n_tokens (n, K, R), prompt ids


def scores_frame(L: np.ndarray, n_tokens: np.ndarray, prompt_ids: list[str], *,
                 set_name: str = "s", span: str = "cot") -> pd.DataFrame:
    """The scores.parquet rows of one set and span: L (n, K, K, R), n_tokens (n, K, R)."""
    n, k, _, r = L.shape
    rows = [
        {"set": set_name, "prompt_id": prompt_ids[x], "condition": i, "variant": j, "replicate": rr,
         "span": span, "logp_sum": float(L[x, i, j, rr]), "n_tokens": int(n_tokens[x, j, rr])}
        for x, i, j, rr in itertools.product(range(n), range(k), range(k), range(r))
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def grid() -> Grid:
    rng = np.random.default_rng(0)
    L = rng.uniform(-50, -1, size=(3, 2, 2, 2))
    n_tokens = rng.integers(1, 40, size=(3, 2, 2))
    return L, n_tokens, ["p-b", "p-a", "p-c"]


def test_round_trip_orders_prompts_by_id(grid: Grid) -> None:
    L, n_tokens, ids = grid
    df = scores_frame(L, n_tokens, ids).sample(frac=1.0, random_state=1)  # row order must not matter
    other = scores_frame(L - 100, n_tokens, ids, set_name="other")
    t = score_tensor(pd.concat([df, other]), "s", "cot")
    assert isinstance(t, ScoreTensor)
    assert t.prompt_ids == ["p-a", "p-b", "p-c"]
    order = [ids.index(p) for p in t.prompt_ids]
    np.testing.assert_array_equal(t.L, L[order])
    np.testing.assert_array_equal(t.n_tokens, n_tokens[order])
    assert t.L.dtype == np.float64 and t.L.shape == (3, 2, 2, 2)


def test_missing_cell_names_the_prompt_and_cell(grid: Grid) -> None:
    L, n_tokens, ids = grid
    df = scores_frame(L, n_tokens, ids)
    hole = (df["prompt_id"] == "p-c") & (df["condition"] == 1) & (df["variant"] == 0) & (df["replicate"] == 1)
    with pytest.raises(SIError, match=r"'p-c' lacks \(condition 1, variant 0, replicate 1\).*si score"):
        score_tensor(df[~hole], "s", "cot")


def test_manifest_k_larger_than_scored_is_an_incomplete_grid(grid: Grid) -> None:
    L, n_tokens, ids = grid
    with pytest.raises(SIError, match="incomplete grid"):
        score_tensor(scores_frame(L, n_tokens, ids), "s", "cot", k=3)
    with pytest.raises(SIError, match="outside condition/variant 0..0"):
        score_tensor(scores_frame(L, n_tokens, ids), "s", "cot", k=1)


def test_duplicate_rows_are_refused(grid: Grid) -> None:
    L, n_tokens, ids = grid
    df = scores_frame(L, n_tokens, ids)
    with pytest.raises(SIError, match="duplicate rows.*'p-b'"):
        score_tensor(pd.concat([df, df.iloc[[0]]]), "s", "cot")


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_logp_names_every_field(bad: float, grid: Grid) -> None:
    L, n_tokens, ids = grid
    L = L.copy()
    L[1, 0, 1, 1] = bad  # prompt "p-a", condition 0, variant 1, replicate 1
    with pytest.raises(SIError) as info:
        score_tensor(scores_frame(L, n_tokens, ids), "s", "cot")
    msg = str(info.value)
    for part in ("set='s'", "span='cot'", "prompt_id='p-a'", "condition=0", "variant=1", "replicate=1",
                 "si score"):
        assert part in msg


def test_token_counts_must_agree_across_conditions(grid: Grid) -> None:
    L, n_tokens, ids = grid
    df = scores_frame(L, n_tokens, ids)
    cell = (df["prompt_id"] == "p-b") & (df["condition"] == 1) & (df["variant"] == 0) & (df["replicate"] == 0)
    df.loc[cell, "n_tokens"] += 1
    with pytest.raises(SIError, match=r"n_tokens differs.*'p-b', variant 0, replicate 0"):
        score_tensor(df, "s", "cot")


def test_missing_column_set_or_span_is_refused(grid: Grid) -> None:
    L, n_tokens, ids = grid
    df = scores_frame(L, n_tokens, ids)
    with pytest.raises(SIError, match=r"\['n_tokens'\] missing"):
        score_tensor(df.drop(columns="n_tokens"), "s", "cot")
    with pytest.raises(SIError, match="no rows for set 'nope'"):
        score_tensor(df, "nope", "cot")
    with pytest.raises(SIError, match="no rows for set 's', span 'full'"):
        score_tensor(df, "s", "full")
    with pytest.raises(SIError, match="span = 'middle'"):
        score_tensor(df, "s", "middle")
