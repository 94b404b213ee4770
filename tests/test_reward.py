"""Known-answer tests of the reward functions (hand-computed values)."""

import math

import pytest
import torch

from rlprune.reward import accuracy_reward, amc_reward, budget_reward, efficiency, psi


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def test_psi_table() -> None:
    # (b - d) / b within the bound, 5x steeper beyond it.
    got = psi(t(0.0, 0.5, 1.0, 2.0, -1.0), b=1.0)
    assert torch.allclose(got, t(1.0, 0.5, 0.0, -5.0, 2.0))
    assert torch.allclose(psi(t(3.0), b=2.0), t(-2.5))


def test_efficiency_is_log_ratio() -> None:
    assert torch.allclose(efficiency(t(32, 16, 8), 32), t(0.0, math.log(2), math.log(4)))


@pytest.mark.parametrize(
    ("drop", "b", "kept", "total", "expected"),
    [
        (0.5, 1.0, 16, 32, 0.5 * math.log(2)),  # within bound, half pruned
        (0.0, 1.0, 32, 32, 0.0),  # nothing pruned -> no reward
        (2.0, 1.0, 8, 32, -5.0 * math.log(4)),  # beyond bound: steep negative
        (1.0, 2.0, 4, 16, 0.5 * math.log(4)),
    ],
)
def test_accuracy_reward_table(drop, b, kept, total, expected) -> None:
    got = accuracy_reward(t(drop), b, t(kept), total)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_accuracy_reward_prefers_more_pruning_within_bound() -> None:
    r = accuracy_reward(t(0.2, 0.2), 1.0, t(24, 12), 32)
    assert r[1] > r[0] > 0


@pytest.mark.parametrize(
    ("drop", "macs", "target", "expected"),
    [
        (1.0, 110.0, 100.0, -1.0 - 100 * math.log(1.1)),  # 10% over budget
        (0.5, 50.0, 100.0, -0.5 - 20 * math.log(2)),  # past the budget: smaller penalty
        (0.3, 100.0, 100.0, -0.3),  # on budget: -drop
    ],
)
def test_budget_reward_table(drop, macs, target, expected) -> None:
    got = budget_reward(t(drop), t(macs), target, penalty=100.0, under=20.0)
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_amc_reward_table() -> None:
    e10, e11, e12 = math.exp(10), math.exp(11), math.exp(12)
    assert amc_reward(t(90.0), t(e10), e11).item() == pytest.approx(-1.0)  # -0.1 * 10
    assert amc_reward(t(90.0), t(e12), e11).item() == pytest.approx(-0.1 * 12 - 1.0)


def test_psi_rejects_nonpositive_bound() -> None:
    with pytest.raises(ValueError):
        psi(t(0.0), b=0.0)
