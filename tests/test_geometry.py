"""Geometry: the pure functions on synthetic clouds with known answers, then the model path on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from si_toolkit.cli.confirm import geometry_command
from si_toolkit.confirm.geometry import (
    GeometryConfig,
    alternative_direction,
    analyze_geometry,
    antithesis_direction,
    decompose_shift,
    effective_rank,
    layer_geometry,
    principle_directions,
    render_inputs,
    sinkhorn_divergence,
    write_geometry,
)
from si_toolkit.principles import load_principle_set

ANTI = ("mode: antithesis\nprinciples:\n  - id: brief\n    text: Be brief.\n    antithesis: Be long-winded.\n"
        "  - id: kind\n    text: Be kind.\n    antithesis: Be rude.\n")
ALT = "mode: alternatives\nprinciples:\n  - id: pirate\n    text: Talk like a pirate.\n  - id: butler\n    text: Talk like a butler.\n"


def _orthonormal(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q  # (n, r) with orthonormal columns


# ----------------------------------------------------------------------------- effective rank


@pytest.mark.parametrize("r", [1, 3, 7])
def test_effective_rank_of_r_equal_singular_values_is_r(r: int) -> None:
    rng = np.random.default_rng(r)
    matrix = _orthonormal(rng, 40, r) @ (2.5 * np.eye(r)) @ _orthonormal(rng, 16, r).T  # (40, 16), rank r
    assert effective_rank(matrix) == pytest.approx(r, rel=1e-9)  # p_i = 1/r → exp(log r)


def test_effective_rank_of_a_generic_rank_r_matrix_is_at_most_r() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((50, 4)) @ rng.standard_normal((4, 30))
    assert 1.0 < effective_rank(matrix) <= 4.0 + 1e-9
    assert effective_rank(np.zeros((5, 3))) == 0.0


# ----------------------------------------------------------------------------- directions and shifts


def test_decompose_shift_hand_worked() -> None:
    # Δ = 2 e1 + 3 e2 against d = 5 e1: parallel 2, orthogonal 3 (the direction's length does not matter)
    assert decompose_shift(np.array([2.0, 3.0, 0.0]), np.array([5.0, 0.0, 0.0])) == pytest.approx((2.0, 3.0))
    assert decompose_shift(np.array([2.0, 3.0, 0.0]), np.array([-1.0, 0.0, 0.0])) == pytest.approx((-2.0, 3.0))
    with pytest.raises(ValueError, match="zero"):
        decompose_shift(np.ones(3), np.zeros(3))


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_decompose_shift_is_pythagorean(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shift, direction = rng.standard_normal(8), rng.standard_normal(8)
    parallel, orthogonal = decompose_shift(shift, direction)
    assert parallel**2 + orthogonal**2 == pytest.approx(float(shift @ shift), rel=1e-9)
    assert orthogonal >= 0.0


def test_directions_hand_worked() -> None:
    # one prompt, K = 3 variants with states e1, e2, e3 (D = 3)
    states = np.eye(3)[None, :, :]  # (n=1, K=3, D=3)
    assert antithesis_direction(states, 0, 2).tolist() == [1.0, 0.0, -1.0]
    # variant 1 minus the mean of variants 0 and 2
    assert alternative_direction(states, 1).tolist() == [-0.5, 1.0, -0.5]
    # averaging over prompts: a second prompt offset by a constant gives the same direction
    two = np.concatenate([states, states + 7.0])
    assert antithesis_direction(two, 0, 2).tolist() == [1.0, 0.0, -1.0]


def test_principle_directions_follow_the_set_mode(write_set) -> None:
    states = np.random.default_rng(1).standard_normal((4, 3, 5))
    anti = principle_directions(states, load_principle_set(write_set("anti", ANTI)))
    assert [pid for pid, _ in anti] == ["brief", "kind"]  # variants: all-positive, flip brief, flip kind
    np.testing.assert_allclose(anti[1][1], (states[:, 0] - states[:, 2]).mean(axis=0))
    alt = principle_directions(states[:, :2], load_principle_set(write_set("alt", ALT)))
    assert [pid for pid, _ in alt] == ["pirate", "butler"]
    np.testing.assert_allclose(alt[0][1], -alt[1][1])  # with K = 2 the two contrasts are opposite


def test_a_shift_along_a_principle_is_recovered(write_set) -> None:
    principle_set = load_principle_set(write_set("anti", ANTI))
    rng = np.random.default_rng(7)
    base = rng.standard_normal((12, 3, 16))  # (n, K, D)
    _, direction = principle_directions(base, principle_set)[1]  # "kind"
    unit = direction / np.linalg.norm(direction)
    trained = base + 0.8 * unit  # every state moves 0.8 along the principle
    layer = layer_geometry(base, trained, principle_set)
    kind = layer["principles"][1]
    assert kind["parallel"] == pytest.approx(0.8) and kind["orthogonal"] == pytest.approx(0.0, abs=1e-9)
    assert kind["parallel_rel"] == pytest.approx(0.8 / np.linalg.norm(direction))
    assert layer["shift_norm"] == pytest.approx(0.8)
    assert layer["sinkhorn"] > 0.0
    # a rigid shift leaves the centred cloud, hence its effective rank, unchanged
    assert layer["effective_rank_trained"] == pytest.approx(layer["effective_rank_base"])


def test_identical_clouds_have_zero_divergence_and_no_shift(write_set) -> None:
    principle_set = load_principle_set(write_set("anti", ANTI))
    base = np.random.default_rng(3).standard_normal((6, 3, 10))
    layer = layer_geometry(base, base.copy(), principle_set)
    assert layer["sinkhorn"] == pytest.approx(0.0, abs=1e-9)
    assert layer["shift_norm"] == 0.0
    assert all(p["parallel"] == 0.0 and p["orthogonal"] == 0.0 for p in layer["principles"])
    flat = base.reshape(-1, 10)
    assert sinkhorn_divergence(flat, flat + 3.0) > sinkhorn_divergence(flat, flat + 0.1) > 0.0


# ----------------------------------------------------------------------------- the model path


def test_suffix_pooling_covers_only_the_tokens_after_the_principle(tiny_backend, write_set) -> None:
    principle_set = load_principle_set(write_set("anti", ANTI))
    ids, starts = render_inputs(tiny_backend.tokenizer, principle_set, ["What is 2 + 2?"], pool="suffix", prefill=True)
    pooled = [tuple(seq[start:]) for seq, start in zip(ids, starts)]
    assert len(set(pooled)) == 1 and len(pooled[0]) > 0  # the same tokens under every variant...
    assert len({tuple(seq[: start]) for seq, start in zip(ids, starts)}) == 3  # ...after three different prefixes
    assert "2 + 2" in tiny_backend.tokenizer.decode(list(pooled[0]))
    _, all_starts = render_inputs(tiny_backend.tokenizer, principle_set, ["What is 2 + 2?"], pool="all", prefill=True)
    assert all_starts == [0, 0, 0]


def test_geometry_of_two_tiny_models(tiny_model_dir: Path, tmp_path: Path, write_set) -> None:
    from conftest import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    principles = write_set("anti", ANTI)
    app = typer.Typer()
    app.command("geometry")(geometry_command)
    app.command("noop")(lambda: None)
    out = tmp_path / "geo"
    result = CliRunner().invoke(app, ["geometry", str(tiny_model_dir), str(other), "--principles", str(principles),
                                      "--n-prompts", "2", "--out", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [row["layer"] for row in data["layers"]] == [0, 1, 2]  # embeddings + 2 blocks
    assert data["n_points"] == 2 * 3 and data["hidden_size"] == 64
    assert all(row["sinkhorn"] > 0.0 for row in data["layers"])  # different random weights
    assert [p["id"] for p in data["layers"][1]["principles"]] == ["brief", "kind"]
    assert json.loads((out / "geometry.json").read_text())["layers"] == data["layers"]
    for name in ("sinkhorn_by_layer", "effective_rank_by_layer", "principle_shift_by_layer"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_against_itself_has_not_moved(tiny_model_dir: Path, tmp_path: Path, write_set) -> None:
    config = GeometryConfig(prompts="builtin:arithmetic", n_prompts=2, pool="all")
    result = analyze_geometry(str(tiny_model_dir), str(tiny_model_dir), write_set("alt", ALT), config)
    assert all(row["sinkhorn"] == pytest.approx(0.0, abs=1e-9) and row["shift_norm"] == 0.0 for row in result["layers"])
    assert result["prompt_ids"] == [p for p in result["prompt_ids"] if p.startswith("arith-")]
    assert len(write_geometry(result, tmp_path / "self")) == 4
