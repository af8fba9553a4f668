"""Tests of si_toolkit.train.losses: hand-worked values (arithmetic in comments) and invariants."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from si_toolkit.errors import SIError
from si_toolkit.train import losses
from si_toolkit.train.losses import (
    LOSS_AGGREGATIONS,
    SAMI_CRITICS,
    batched_sami_loss,
    group_advantages,
    grpo_loss,
    pool_hidden_states,
    sami_loss,
    sinkhorn_penalty,
)


def test_the_package_exports_every_term_under_one_all() -> None:
    """`from si_toolkit.train import losses` gives every public name of its term modules."""
    from si_toolkit.train.losses import _correction, _grpo, _sami, _sinkhorn

    modules = (_grpo, _correction, _sami, _sinkhorn)
    assert set(losses.__all__) == set().union(*(m.__all__ for m in modules))
    assert all(getattr(losses, name) is getattr(module, name) for module in modules for name in module.__all__)


def test_pot_is_imported_on_first_use_without_backends_it_never_uses() -> None:
    """Importing the losses neither imports POT nor touches the environment; the first Sinkhorn
    call imports POT with JAX / CuPy / TensorFlow turned off (on hosts with JAX installed, POT
    would build a JAX backend and JAX would warn about float64 at every run). A fresh
    interpreter, because this test process may have imported POT already."""
    script = (
        "import os, sys, torch\n"
        "from si_toolkit.train import losses\n"
        "assert 'ot' not in sys.modules, 'POT imported with the package'\n"
        "assert not any(k.startswith('POT_BACKEND_DISABLE_') for k in os.environ), 'environment set at import'\n"
        "losses.sinkhorn_penalty(torch.randn(4, 2), torch.randn(4, 2))\n"
        "import ot\n"
        "print(os.environ['POT_BACKEND_DISABLE_JAX'], os.environ['POT_BACKEND_DISABLE_CUPY'], os.environ['POT_BACKEND_DISABLE_TENSORFLOW'])\n"
        "print(','.join(sorted(type(b).__name__ for b in ot.backend.get_backend_list())))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POT_BACKEND_DISABLE_")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    flags, names = done.stdout.strip().splitlines()[-2:]
    assert flags == "1 1 1"
    assert "TorchBackend" in names and not {"JaxBackend", "CupyBackend", "TensorflowBackend"} & set(names.split(","))


# --------------------------------------------------------------------------------------------
# group_advantages
# --------------------------------------------------------------------------------------------


def test_group_advantages_hand_values() -> None:
    # Group 1 = [1, 0, 0, 0]: mean 0.25, unbiased var = (0.75² + 3·0.25²)/3 = 0.75/3 = 0.25, std 0.5.
    #   A = 0.75 / 0.5001 = 1.49970006,  −0.25 / 0.5001 = −0.49990002.
    # Group 2 = [1, 1, 1, 1]: centred to 0, so A = 0 / (0 + 1e-4) = 0 (no signal).
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    expected = torch.tensor([0.75 / 0.5001] + [-0.25 / 0.5001] * 3 + [0.0] * 4, dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, 4), expected)


def test_group_advantages_none_only_centres() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0])
    # Means 0.25 and 2.0, no division.
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 1.0, -1.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(rewards, 4, scale="none"), expected)


def test_group_advantages_match_unbiased_torch_std() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(6 * 5, generator=gen, dtype=torch.float64)
    grouped = rewards.view(6, 5)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)  # unbiased
    torch.testing.assert_close(group_advantages(rewards, 5), expected.reshape(-1))


def test_group_advantages_nan_reward_is_left_out() -> None:
    # Valid [1, 0, 0]: mean 1/3, unbiased var = ((2/3)² + 2·(1/3)²)/2 = (6/9)/2 = 1/3, std = 0.57735.
    rewards = torch.tensor([1.0, float("nan"), 0.0, 0.0], dtype=torch.float64)
    std = math.sqrt(1.0 / 3.0) + 1e-4
    expected = torch.tensor([(2 / 3) / std, 0.0, (-1 / 3) / std, (-1 / 3) / std], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, 4), expected)


def test_group_advantages_batch_divides_by_the_std_of_every_reward() -> None:
    # TRL scale_rewards="batch": centre by the group mean, divide by the std of all 8 rewards.
    # Rewards 1, 0, 0, 0 | 3, 1, 2, 2: group means 0.25 and 2.0; batch mean 9/8 = 1.125.
    # Squared deviations: 0.015625 + 3·1.265625 + 3.515625 + 0.015625 + 2·0.765625 = 8.875;
    # unbiased var = 8.875 / 7 = 1.267857, std = 1.126014.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    std = math.sqrt(8.875 / 7) + 1e-4
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 1.0, -1.0, 0.0, 0.0], dtype=torch.float64) / std
    torch.testing.assert_close(group_advantages(rewards, 4, scale="batch"), expected)
    assert float(rewards.std()) == pytest.approx(std - 1e-4)  # the same std torch computes


def test_group_advantages_batch_ignores_nan_rewards() -> None:
    # Valid rewards 1, 0 | 2, 4 (the NaN in group 1 is left out): group means 0.5 and 3.
    # Batch mean 7/4; squared deviations 0.5625 + 3.0625 + 0.0625 + 5.0625 = 8.75; var 8.75/3.
    rewards = torch.tensor([1.0, float("nan"), 0.0, 2.0, 4.0, float("nan")], dtype=torch.float64)
    std = math.sqrt(8.75 / 3) + 1e-4
    expected = torch.tensor([0.5 / std, 0.0, -0.5 / std, -1.0 / std, 1.0 / std, 0.0], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, 3, scale="batch"), expected)


def test_group_advantages_rejects_bad_input() -> None:
    with pytest.raises(SIError, match="num_generations"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(SIError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="batches")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# grpo_loss
# --------------------------------------------------------------------------------------------


def _on_policy_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 completions, T = 3; completion 2 has 2 tokens. Advantages +1 and −2."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages = torch.tensor([1.0, -2.0], dtype=torch.float64)
    return logp, mask, advantages


# On-policy (ρ = 1) the per-token loss is −Â: −1 on row 1's three tokens, +2 on row 2's two tokens.
#   grpo:    mean(−3/3, 4/2) = mean(−1, 2) = 0.5
#   dr_grpo: (−3 + 4) / (N·T) = 1 / (2·3) = 1/6       (max_completion_length defaults to T = 3)
#   dapo:    (−3 + 4) / 5 active tokens = 0.2
ON_POLICY_LOSS = {"grpo": 0.5, "dr_grpo": 1.0 / 6.0, "dapo": 0.2}
# d loss / d logp at ρ = 1 is −Â · (normaliser of that token):
#   grpo: row 1: −1/(3·2) = −1/6; row 2: 2/(2·2) = 0.5.  dr_grpo: −1/6 and 2/6.  dapo: −1/5 and 2/5.
ON_POLICY_GRAD = {"grpo": (-1 / 6, 0.5), "dr_grpo": (-1 / 6, 2 / 6), "dapo": (-0.2, 0.4)}


@pytest.mark.parametrize("loss_type", sorted(LOSS_AGGREGATIONS))
def test_grpo_on_policy_aggregations(loss_type: str) -> None:
    logp, mask, advantages = _on_policy_batch()
    loss, stats = grpo_loss(logp, logp.detach(), advantages, mask, loss_type=loss_type)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(ON_POLICY_LOSS[loss_type], abs=1e-12)
    loss.backward()  # type: ignore[no-untyped-call]
    assert logp.grad is not None
    g1, g2 = ON_POLICY_GRAD[loss_type]
    expected = torch.tensor([[g1, g1, g1], [g2, g2, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)
    assert stats["clip_ratio_region"] == 0.0 and "kl" not in stats


# Completion 2 truncated (mask_truncated_completions): its two tokens leave the loss.
#   grpo:    mean(−3/3, 0) = −0.5   (it still counts as one of the N = 2 sequences, as in TRL)
#   dr_grpo: −3 / (2·3) = −0.5
#   dapo:    −3 / 3 remaining tokens = −1.0
TRUNCATED_LOSS = {"grpo": -0.5, "dr_grpo": -0.5, "dapo": -1.0}


@pytest.mark.parametrize("loss_type", sorted(LOSS_AGGREGATIONS))
def test_grpo_truncated_completions_leave_the_loss(loss_type: str) -> None:
    logp, mask, advantages = _on_policy_batch()
    ref = logp.detach() - 0.5  # KL would be e^{-0.5} + 0.5 − 1 = 0.1065 on every active token
    truncated = torch.tensor([False, True])
    loss, stats = grpo_loss(logp, logp.detach(), advantages, mask, loss_type=loss_type,  # type: ignore[arg-type]
                            truncated=truncated, ref_logp=ref)
    assert loss.item() == pytest.approx(TRUNCATED_LOSS[loss_type], abs=1e-12)
    loss.backward()  # type: ignore[no-untyped-call]
    assert logp.grad is not None and float(logp.grad[1].abs().sum()) == 0.0  # no gradient through row 2
    assert stats["kl"] == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-12)
    untouched, _ = grpo_loss(logp, logp.detach(), advantages, mask, loss_type=loss_type,  # type: ignore[arg-type]
                             truncated=torch.tensor([False, False]))
    assert untouched.item() == pytest.approx(ON_POLICY_LOSS[loss_type], abs=1e-12)
    with pytest.raises(ValueError, match="truncated"):
        grpo_loss(logp, logp.detach(), advantages, mask, truncated=torch.tensor([True]))


def test_grpo_dr_grpo_uses_max_completion_length() -> None:
    logp, mask, advantages = _on_policy_batch()
    loss, _ = grpo_loss(logp, logp.detach(), advantages, mask, loss_type="dr_grpo", max_completion_length=4)
    assert loss.item() == pytest.approx(1.0 / (2 * 4))  # (−3 + 4) / (N · 4)
    with pytest.raises(SIError, match="max_completion_length"):
        grpo_loss(logp, logp.detach(), advantages, mask, loss_type="dr_grpo", max_completion_length=2)


# One completion of 4 tokens with ratios ρ = [1.5, 0.5, 1.1, 0.9], ε = 0.2 (clip range [0.8, 1.2]).
RATIOS = [1.5, 0.5, 1.1, 0.9]


def _ratio_batch(advantage: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    logp = (old + torch.log(torch.tensor([RATIOS], dtype=torch.float64))).requires_grad_(True)
    return logp, old, torch.tensor([advantage], dtype=torch.float64), torch.ones(1, 4)


def test_grpo_clip_positive_advantage() -> None:
    # Â = +1: ℓ = −min(ρ, clip(ρ)) = −[min(1.5,1.2), min(0.5,0.8), 1.1, 0.9] = −[1.2, 0.5, 1.1, 0.9]
    #   loss = −3.7/4 = −0.925. Only the ceiling binds (token 1): clip_high = 1/4, clip_low = 0.
    # Gradient: token 1 is clipped (0); others −ρ/4: −0.125, −0.275, −0.225.
    logp, old, adv, mask = _ratio_batch(1.0)
    loss, stats = grpo_loss(logp, old, adv, mask, epsilon=0.2)
    assert loss.item() == pytest.approx(-0.925)
    assert stats == pytest.approx({"clip_ratio_low": 0.0, "clip_ratio_high": 0.25, "clip_ratio_region": 0.25})
    loss.backward()  # type: ignore[no-untyped-call]
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.125, -0.275, -0.225]], dtype=torch.float64))


def test_grpo_clip_negative_advantage() -> None:
    # Â = −1: ℓ = −min(−ρ, −clip(ρ)) = max(ρ, clip(ρ)) = [1.5, max(0.5,0.8)=0.8, 1.1, 0.9]
    #   loss = 4.3/4 = 1.075. Only the floor binds (token 2): clip_low = 1/4.
    logp, old, adv, mask = _ratio_batch(-1.0)
    loss, stats = grpo_loss(logp, old, adv, mask, epsilon=0.2)
    assert loss.item() == pytest.approx(1.075)
    assert stats == pytest.approx({"clip_ratio_low": 0.25, "clip_ratio_high": 0.0, "clip_ratio_region": 0.25})


def test_grpo_epsilon_high_widens_the_ceiling() -> None:
    # ε_high = 0.6: ceiling 1.6 > 1.5, nothing clipped: loss = −(1.5+0.5+1.1+0.9)/4 = −1.0.
    logp, old, adv, mask = _ratio_batch(1.0)
    loss, stats = grpo_loss(logp, old, adv, mask, epsilon=0.2, epsilon_high=0.6)
    assert loss.item() == pytest.approx(-1.0)
    assert stats["clip_ratio_high"] == 0.0


def _sequence_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Row 1 log-ratios [0.2, 0.0] -> mean 0.1; row 2 [−0.4, padding] -> mean −0.4.
    # Padding holds −inf in logp: it must not reach exp().
    old = torch.zeros(2, 2, dtype=torch.float64)
    logp = torch.tensor([[0.2, 0.0], [-0.4, float("-inf")]], dtype=torch.float64, requires_grad=True)
    return logp, old, torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([[1, 1], [1, 0]])


def test_grpo_sequence_level_is_gspo() -> None:
    # ρ1 = e^0.1 = 1.1051709, ρ2 = e^−0.4 = 0.6703200 (both inside [0.8, 1.2] or below with Â > 0),
    # every token of a sequence carries its sequence's ℓ = −ρ:
    #   grpo: mean(−1.1051709, −0.6703200) = −0.8877455
    #   dapo: (2·(−1.1051709) − 0.6703200) / 3 = −2.8806618/3 = −0.9602206
    logp, old, adv, mask = _sequence_batch()
    rho1, rho2 = math.exp(0.1), math.exp(-0.4)
    loss, _ = grpo_loss(logp, old, adv, mask, importance_level="sequence", loss_type="grpo")
    assert loss.item() == pytest.approx(-(rho1 + rho2) / 2)
    loss_dapo, _ = grpo_loss(logp, old, adv, mask, importance_level="sequence", loss_type="dapo")
    assert loss_dapo.item() == pytest.approx(-(2 * rho1 + rho2) / 3)
    loss.backward()  # type: ignore[no-untyped-call]
    assert logp.grad is not None and bool(torch.isfinite(logp.grad).all())
    # d/dlogp_{1,t} of −ρ1/2 with log ρ1 = mean_t(logp_1t): −ρ1/2 · 1/2 for each of row 1's tokens.
    assert float(logp.grad[0, 0]) == pytest.approx(-rho1 / 4)
    assert float(logp.grad[1, 1]) == 0.0


def test_grpo_sequence_level_clips_whole_sequence() -> None:
    # ε = 0.05: ρ1 = 1.105 > 1.05 with Â > 0 -> both tokens of row 1 clipped: ℓ = −1.05 each.
    # Row 2: ρ2 = 0.670 < 0.95 but Â > 0, so min(0.670, 0.95) = 0.670: not clipped.
    #   grpo loss = mean(−1.05, −0.6703200); clip_high = 2 of 3 active tokens.
    logp, old, adv, mask = _sequence_batch()
    loss, stats = grpo_loss(logp, old, adv, mask, epsilon=0.05, importance_level="sequence")
    assert loss.item() == pytest.approx(-(1.05 + math.exp(-0.4)) / 2)
    assert stats["clip_ratio_high"] == pytest.approx(2 / 3)
    assert stats["clip_ratio_low"] == 0.0


def test_grpo_kl_k3() -> None:
    # π_θ = 0.5, π_ref = 0.25: δ = ref − logp = log 0.5 = −0.6931472;
    #   k3 = e^δ − δ − 1 = 0.5 + 0.6931472 − 1 = 0.1931472.
    # Â = 0 so the surrogate is 0 and loss = β · k3 = 0.1 · 0.1931472 = 0.01931472.
    # dk3/dlogp = 1 − e^δ = 0.5, times β = 0.05.
    logp = torch.tensor([[math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]], dtype=torch.float64)
    loss, stats = grpo_loss(logp, logp.detach(), torch.zeros(1, dtype=torch.float64), torch.ones(1, 1), ref_logp=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2.0) - 1.0))
    assert stats["kl"] == pytest.approx(0.5 + math.log(2.0) - 1.0)
    loss.backward()  # type: ignore[no-untyped-call]
    assert logp.grad is not None and float(logp.grad) == pytest.approx(0.05)


def test_grpo_kl_is_zero_at_the_reference_and_logged_without_beta() -> None:
    logp = torch.tensor([[-1.0, -2.0]])
    _, stats = grpo_loss(logp, logp, torch.ones(1), torch.ones(1, 2), ref_logp=logp.clone())
    assert stats["kl"] == 0.0


def test_grpo_rejects_bad_options() -> None:
    logp = torch.zeros(1, 2)
    args = (logp, logp, torch.ones(1), torch.ones(1, 2))
    with pytest.raises(SIError, match="ref_logp"):
        grpo_loss(*args, beta=0.1)
    with pytest.raises(SIError, match="loss_type"):
        grpo_loss(*args, loss_type="bnpo")  # type: ignore[arg-type]
    with pytest.raises(SIError, match="importance_level"):
        grpo_loss(*args, importance_level="tok")  # type: ignore[arg-type]
    with pytest.raises(SIError, match="epsilon"):
        grpo_loss(*args, epsilon=-0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, logp, torch.ones(2), torch.ones(1, 2))


# --------------------------------------------------------------------------------------------
# SAMI
# --------------------------------------------------------------------------------------------


def _sami_by_loops(logp: list[list[float]], n_tokens: list[list[float]] | None) -> float:
    """SAMI's objective written out element by element (Fränken et al. 2024, Eq. 2, as a loss)."""
    k = len(logp)
    s = [[logp[i][j] / (n_tokens[i][j] if n_tokens else 1.0) for j in range(k)] for i in range(k)]
    row = sum(-(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(k)))) for i in range(k)) / k
    col = sum(-(s[j][j] - math.log(sum(math.exp(s[i][j]) for i in range(k)))) for j in range(k)) / k
    return (row + col) / 2


@pytest.mark.parametrize("critic", sorted(SAMI_CRITICS))
def test_sami_matches_the_loop_formula(critic: str) -> None:
    gen = torch.Generator().manual_seed(1)
    logp = -30.0 * torch.rand(4, 4, generator=gen, dtype=torch.float64)
    n_tokens = torch.randint(5, 40, (4, 4), generator=gen).to(torch.float64)
    loss, stats = sami_loss(logp, n_tokens=n_tokens, critic=critic)  # type: ignore[arg-type]
    counts = n_tokens.tolist() if critic == "mean" else None
    expected = _sami_by_loops(logp.tolist(), counts)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["mi_bound"] == pytest.approx(math.log(4) - expected, abs=1e-12)


def test_sami_hand_values_asymmetric() -> None:
    # S = [[0, −1], [−3, −0.5]] (sum critic), diagonal = matched pairs.
    #   row 0: log(1 + e^−1) = 0.3132617            row 1: 0.5 + log(e^−3 + e^−0.5) = 0.0788897
    #   col 0: log(1 + e^−3) = 0.0485874            col 1: 0.5 + log(e^−1 + e^−0.5) = 0.4740770
    #   L_row = 0.1960757, L_col = 0.2613322, L = 0.2287039, bound = log 2 − L = 0.4644432
    s = torch.tensor([[0.0, -1.0], [-3.0, -0.5]], dtype=torch.float64)
    loss, stats = sami_loss(s, critic="sum")
    l_row = (math.log(1 + math.exp(-1)) + 0.5 + math.log(math.exp(-3) + math.exp(-0.5))) / 2
    l_col = (math.log(1 + math.exp(-3)) + 0.5 + math.log(math.exp(-1) + math.exp(-0.5))) / 2
    assert stats["loss_row"] == pytest.approx(l_row) and l_row == pytest.approx(0.1960757, abs=1e-7)
    assert stats["loss_col"] == pytest.approx(l_col) and l_col == pytest.approx(0.2613322, abs=1e-7)
    assert loss.item() == pytest.approx(0.2287039, abs=1e-7)
    assert stats["mi_bound"] == pytest.approx(0.4644432, abs=1e-7)
    assert stats["accuracy_row"] == 1.0 and stats["accuracy_col"] == 1.0


def test_sami_mean_critic_divides_by_token_counts() -> None:
    # Sums [[−2, −8], [−6, −4]] over counts [[2, 4], [2, 4]] give the mean critic [[−1, −2], [−3, −1]].
    sums = torch.tensor([[-2.0, -8.0], [-6.0, -4.0]], dtype=torch.float64)
    counts = torch.tensor([[2.0, 4.0], [2.0, 4.0]], dtype=torch.float64)
    loss, _ = sami_loss(sums, n_tokens=counts, critic="mean")
    direct, _ = sami_loss(torch.tensor([[-1.0, -2.0], [-3.0, -1.0]], dtype=torch.float64), critic="sum")
    assert loss.item() == pytest.approx(float(direct))
    with pytest.raises(SIError, match="n_tokens"):
        sami_loss(sums, critic="mean")


@pytest.mark.parametrize("k", [2, 3, 5])
def test_sami_bound_never_exceeds_log_k(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    for _ in range(20):
        s = 10.0 * torch.randn(k, k, generator=gen)
        loss, stats = sami_loss(s, critic="sum")
        assert loss.item() >= 0.0
        assert stats["mi_bound"] <= math.log(k) + 1e-9


def test_sami_perfect_separation_reaches_log_k() -> None:
    # Diagonal 0, off-diagonal −50: each cross-entropy = log(1 + (K−1)e^−50) ≈ 0, bound ≈ log K.
    k = 4
    s = -50.0 * (1.0 - torch.eye(k, dtype=torch.float64))
    loss, stats = sami_loss(s, critic="sum")
    assert stats["mi_bound"] == pytest.approx(math.log(k), abs=1e-12)
    assert loss.item() < 1e-12
    assert stats["accuracy_row"] == 1.0 and stats["accuracy_col"] == 1.0


def test_sami_uninformative_matrix_gives_zero_bound() -> None:
    # All scores equal: every softmax is uniform, each CE = log K, bound 0; ties count as misses.
    loss, stats = sami_loss(torch.full((3, 3), -7.0), critic="sum")
    assert loss.item() == pytest.approx(math.log(3))
    assert stats["mi_bound"] == pytest.approx(0.0, abs=1e-6)
    assert stats["accuracy_row"] == 0.0 and stats["accuracy_col"] == 0.0


def test_sami_permutation_invariance_and_gradient_sign() -> None:
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    perm = torch.tensor([2, 0, 3, 1])
    loss, _ = sami_loss(s, critic="sum")
    permuted, _ = sami_loss(s[perm][:, perm], critic="sum")
    assert permuted.item() == pytest.approx(loss.item())
    loss.backward()  # type: ignore[no-untyped-call]
    assert s.grad is not None
    assert bool((torch.diagonal(s.grad) < 0).all())  # raising a matched score lowers the loss


def test_batched_sami_is_the_mean_over_prompts() -> None:
    gen = torch.Generator().manual_seed(4)
    logp = -20.0 * torch.rand(3, 2, 2, generator=gen, dtype=torch.float64)
    counts = torch.randint(1, 9, (3, 2, 2), generator=gen).to(torch.float64)
    loss, stats = batched_sami_loss(logp, n_tokens=counts)
    singles = [sami_loss(logp[p], n_tokens=counts[p]) for p in range(3)]
    assert loss.item() == pytest.approx(sum(float(one[0]) for one in singles) / 3)
    assert stats["mi_bound"] == pytest.approx(sum(one[1]["mi_bound"] for one in singles) / 3)


def test_sami_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="K, K"):
        sami_loss(torch.zeros(2, 3), critic="sum")
    with pytest.raises(SIError, match="K=1"):
        sami_loss(torch.zeros(1, 1), critic="sum")
    with pytest.raises(SIError, match="critic"):
        sami_loss(torch.zeros(2, 2), critic="max")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# pool_hidden_states
# --------------------------------------------------------------------------------------------


def test_pool_hidden_states_masked_mean() -> None:
    # Row 1 pools tokens 0 and 1: ((1,2) + (3,4))/2 = (2, 3). Row 2 pools token 2 only: (9, 9).
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    torch.testing.assert_close(pool_hidden_states(hidden, mask), torch.tensor([[2.0, 3.0], [9.0, 9.0]]))
    assert pool_hidden_states(hidden.bfloat16(), mask).dtype == torch.float32
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        pool_hidden_states(hidden, torch.tensor([[1, 0, 0], [0, 0, 0]]))


# --------------------------------------------------------------------------------------------
# sinkhorn_penalty
# --------------------------------------------------------------------------------------------


def _cloud(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_sinkhorn_identical_clouds_give_zero() -> None:
    y = _cloud(24, 8, 0)
    assert abs(float(sinkhorn_penalty(y.clone(), y))) < 1e-6


def test_sinkhorn_translation_gives_squared_shift() -> None:
    # For the squared-Euclidean cost, OT_ε(α, α + t) = OT_ε(α, α) + ‖t‖² (the cross term
    # −2⟨x − y, t⟩ integrates to 0 under any coupling of equal-mean marginals), and the self-terms
    # do not move, so S_ε = ‖t‖² exactly, at any ε. Unstandardised, t = 0.5·1 in D = 8:
    # ‖t‖² = 8 · 0.25 = 2. (ε is large here only so that Sinkhorn converges to 1e-10 quickly.)
    y = _cloud(16, 8, 1, torch.float64)
    value = sinkhorn_penalty(y + 0.5, y, standardize=False, epsilon=4.0, dtype=torch.float64, tol=1e-10)
    assert float(value) == pytest.approx(2.0, rel=1e-6)
    # Standardised by the reference spread s² = mean ‖y − ȳ‖²: S = ‖t‖² / s² = 2 / s².
    spread2 = float(((y - y.mean(0)) ** 2).sum(1).mean())
    scaled = sinkhorn_penalty(y + 0.5, y, epsilon=0.5, dtype=torch.float64, tol=1e-10)
    assert float(scaled) == pytest.approx(2.0 / spread2, rel=1e-6)


def test_sinkhorn_grows_monotonically_with_a_shift() -> None:
    x, y = _cloud(24, 8, 2), _cloud(24, 8, 3)  # two samples of one distribution
    values = [float(sinkhorn_penalty(x + shift, y)) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[0] >= -1e-5  # S_ε >= 0


def test_sinkhorn_gradient_matches_finite_differences() -> None:
    x = _cloud(5, 3, 4, torch.float64).requires_grad_(True)
    y = _cloud(6, 3, 5, torch.float64)

    def penalty(points: torch.Tensor) -> torch.Tensor:
        return sinkhorn_penalty(points, y, epsilon=0.5, dtype=torch.float64, tol=1e-13, max_iter=50000)

    assert torch.autograd.gradcheck(penalty, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_sinkhorn_small_epsilon_is_not_silently_zero() -> None:
    # Well-separated clouds (means 3 apart per axis in D = 4) at ε = 0.01, where plain Sinkhorn
    # underflows to 0; the log-domain value stays close to the ε = 0.1 value and clearly positive.
    x, y = _cloud(16, 4, 6) + 3.0, _cloud(16, 4, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # also: converged, no warning
        small = float(sinkhorn_penalty(x, y, epsilon=0.01, max_iter=3000))
    assert small > 1.0
    assert small == pytest.approx(float(sinkhorn_penalty(x, y, epsilon=0.1)), rel=0.2)


def test_sinkhorn_detaches_the_reference_and_upcasts() -> None:
    x = _cloud(8, 4, 8).bfloat16().requires_grad_(True)
    y = _cloud(8, 4, 9).requires_grad_(True)
    value = sinkhorn_penalty(x, y)
    assert value.dtype == torch.float32
    value.backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    assert y.grad is None


def test_sinkhorn_warns_when_not_converged() -> None:
    x, y = _cloud(16, 4, 10) + 3.0, _cloud(16, 4, 11)
    with pytest.warns(RuntimeWarning, match="did not converge.*max_iter"):
        sinkhorn_penalty(x, y, epsilon=0.01, max_iter=2)


def test_sinkhorn_raises_on_an_underflowed_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    # What plain Sinkhorn returns when exp(−C/ε) underflows: an all-zero plan and a zero value.
    def underflowed(x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> SimpleNamespace:
        zero = SimpleNamespace(plan=torch.zeros(x.shape[0], y.shape[0]))
        log = {"res_ab": zero, "res_aa": zero, "res_bb": zero}
        return SimpleNamespace(value=torch.zeros(()), log=log)

    sinkhorn_penalty(_cloud(4, 2, 12), _cloud(4, 2, 13))  # the first call imports POT
    monkeypatch.setattr(sys.modules["ot"], "solve_sample", underflowed)
    with pytest.raises(SIError, match="underflowed"):
        sinkhorn_penalty(_cloud(4, 2, 12) + 5.0, _cloud(4, 2, 13), epsilon=1e-4)


def test_sinkhorn_rejects_bad_input() -> None:
    y = _cloud(4, 2, 14)
    with pytest.raises(SIError, match="epsilon"):
        sinkhorn_penalty(y, y, epsilon=0.0)
    with pytest.raises(ValueError, match="\\(N, D\\)"):
        sinkhorn_penalty(y, _cloud(4, 3, 15))
    with pytest.raises(ValueError, match="NaN"):
        sinkhorn_penalty(torch.full((2, 2), float("nan")), y)


def test_sinkhorn_single_reference_point_uses_pooled_spread() -> None:
    # M = 1: the reference has no spread, so both clouds are scaled by their pooled spread.
    x, y = _cloud(6, 3, 16), _cloud(1, 3, 17)
    value = sinkhorn_penalty(x, y)
    assert bool(torch.isfinite(value)) and float(value) > 0.0
