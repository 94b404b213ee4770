"""Rewards: pure functions of a rollout's accuracy drop and its efficiency.

Accuracy-bounded mode (Huang et al. 2018, Eq. 3-5), with ``d`` the accuracy drop in percentage
points against the unpruned baseline and ``b`` the tolerated drop::

    R = psi(d, b) * phi
    psi(d, b) = (b - d) / b                  if d <= b
              = kappa * (b - d) / b          if d >  b   (kappa = 5: steeper beyond the bound)
    phi       = log(C / C_kept)              efficiency="filters" (C filters in the unit)
              = log(M / M_kept)              efficiency="macs"    (model MACs before / with mask)

so keeping everything scores 0, pruning within the bound scores > 0 (more pruning, more reward)
and exceeding it scores < 0 (more pruning, worse).

Budget mode (reach a MAC target with the least accuracy loss), with ``m`` the model MACs with the
mask and ``t`` the unit's MAC budget (see :func:`rlprune.search.unit_budget`)::

    R = -d - lambda * max(0, log(m / t)) - mu * max(0, log(t / m))

so the agent lands ON the budget (overshoot costs lambda = 100 pp per unit of log, pruning past
the unit's share costs mu = 20: the comparison at matched MACs needs the target hit, not
beaten, and a unit that over-prunes takes accuracy that later units could have used).

AMC mode (He et al. 2018, ``R_FLOPs = -Error * log(FLOPs)``) plus the same overshoot penalty::

    R = -(100 - acc) / 100 * log(m) - lambda / 100 * max(0, log(m / t))

(error as a fraction, so the penalty is scaled from pp to fractions by 1/100).
"""

from __future__ import annotations

import torch

__all__ = ["accuracy_reward", "amc_reward", "budget_reward", "efficiency", "psi"]

KAPPA = 5.0


def psi(drop: torch.Tensor, b: float, kappa: float = KAPPA) -> torch.Tensor:
    """Accuracy term of Huang et al.: ``(b - d) / b``, ``kappa`` times steeper beyond ``b``.

    Args:
        drop: accuracy drop(s) in percentage points, any shape.
        b: tolerated drop in pp (> 0).
    """
    if b <= 0:
        raise ValueError("b must be > 0")
    lin = (b - drop) / b
    return torch.where(drop <= b, lin, kappa * lin)


def efficiency(kept: torch.Tensor, total: float) -> torch.Tensor:
    """``log(total / kept)``: 0 when nothing is removed, growing as less is kept."""
    return torch.log(torch.as_tensor(total, dtype=torch.float64) / kept.double().clamp_min(1e-12))


def accuracy_reward(
    drop: torch.Tensor, b: float, kept: torch.Tensor, total: float, kappa: float = KAPPA
) -> torch.Tensor:
    """Huang et al. reward ``psi(d, b) * log(total / kept)``.

    Args:
        drop: ``[K]`` accuracy drops in pp.
        b: tolerated drop in pp.
        kept: ``[K]`` filters (or MACs) kept by each mask.
        total: filters in the unit (or model MACs before the unit).

    Returns:
        ``[K]`` float64 rewards.
    """
    return psi(drop.double(), b, kappa) * efficiency(kept, total)


def budget_reward(
    drop: torch.Tensor,
    macs: torch.Tensor,
    target: float,
    penalty: float = 100.0,
    under: float = 20.0,
) -> torch.Tensor:
    """Budget reward ``-d - penalty * relu(log(m/t)) - under * relu(log(t/m))`` (pp units).

    Args:
        drop: ``[K]`` accuracy drops in pp.
        macs: ``[K]`` model MACs with each mask.
        target: the unit's MAC budget (model MACs it should reach).
    """
    ratio = torch.log(macs.double() / float(target))
    return -drop.double() - penalty * ratio.clamp_min(0) - under * (-ratio).clamp_min(0)


def amc_reward(
    acc: torch.Tensor, macs: torch.Tensor, target: float, penalty: float = 100.0
) -> torch.Tensor:
    """AMC's ``-Error * log(MACs)`` (error as a fraction) plus the budget overshoot penalty."""
    err = (100.0 - acc.double()) / 100.0
    over = torch.log(macs.double() / float(target)).clamp_min(0)
    return -err * torch.log(macs.double()) - penalty / 100.0 * over
