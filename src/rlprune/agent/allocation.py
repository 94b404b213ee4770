"""A policy over the allocation alone: one keep ratio per unit, filters ranked by a prior.

Where :class:`~rlprune.agent.joint.JointAgent` decides every filter (N Bernoulli actions, N in
the thousands), this agent decides U numbers, the logit of each unit's keep ratio, drawn from
a Gaussian around a learnt mean (REINFORCE with a Gaussian policy, Williams 1992; the action
space of AMC, He et al. ECCV 2018). Each unit keeps its ``round(sigmoid(a_u) * C_u)``
best-ranked filters, so masks differ only in how much each layer keeps, and a few hundred
episodes carry enough signal for U means.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlprune.agent.reinforce import advantages

__all__ = ["AllocationAgent"]


class AllocationAgent:
    """Gaussian policy ``a ~ N(mu, sigma^2)`` over per-unit keep-ratio logits ``[U]``.

    Args:
        mu: ``[U]`` starting means (logits of the starting keep ratios).
        sigma: fixed exploration width in logit units.
        lr: Adam step size of ``mu``.
    """

    def __init__(self, mu: torch.Tensor, sigma: float, lr: float) -> None:
        self.sigma = sigma
        self.mu = nn.Parameter(mu.detach().double().clone())
        self.opt = torch.optim.Adam([self.mu], lr=lr)

    def sample(self, k: int, generator: torch.Generator) -> torch.Tensor:
        """``[K, U]`` actions."""
        noise = torch.randn(k, self.mu.numel(), generator=generator, dtype=torch.float64)
        return self.mu.detach() + self.sigma * noise

    def update(self, actions: torch.Tensor, rewards: torch.Tensor) -> float:
        """One REINFORCE step on ``[K, U]`` actions and their ``[K]`` rewards (batch-mean
        baseline, normalised advantages); returns the policy-gradient loss."""
        adv = advantages(rewards.double(), None, True)
        logp = -((actions - self.mu) ** 2).sum(1) / (2 * self.sigma**2)
        loss = -(adv * logp).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"mu": self.mu.detach().clone(), "opt": self.opt.state_dict(), "in_dim": 0}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        with torch.no_grad():
            self.mu.copy_(d["mu"])
        self.opt.load_state_dict(d["opt"])
