"""REINFORCE with a baseline (Williams 1992), as used by Huang et al. 2018 (Eq. 2).

For K masks ``a_k in {0,1}^N`` sampled from ``Bernoulli(p)``, ``p = sigmoid(logits)``::

    A_k   = R_k - baseline                       (baseline: batch mean or moving average)
    A_k  <- (A_k - mean(A)) / (std(A) + 1e-8)    (if normalize; population std)
    loss  = -1/K sum_k A_k * log pi(a_k)  -  beta * mean_i H(p_i)
    log pi(a) = sum_i a_i log p_i + (1 - a_i) log(1 - p_i)

so ``d loss / d logit_i = -1/K sum_k A_k (a_ki - p_i) + beta/N * logit_i p_i (1 - p_i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "PolicyStats",
    "ReinforceTerms",
    "advantages",
    "bernoulli_entropy",
    "reinforce_loss",
    "sample_masks",
]


@dataclass(frozen=True)
class PolicyStats:
    """Diagnostics of one update (logged to metrics.jsonl).

    The loss's two terms are logged apart, as CleanRL does, so that the entropy bonus cannot
    hide what the policy-gradient term does: ``pg_loss`` is the pure REINFORCE term
    ``-1/K sum_k A_k log pi(a_k)`` of the update, ``entropy`` the mean per-filter entropy in
    nats and ``mean_keep`` the mean keep probability, both of the policy after the step (the
    early stop reads that entropy).
    """

    pg_loss: float
    entropy: float
    mean_keep: float
    reward_mean: float
    reward_max: float


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-filter Bernoulli entropy in nats, ``[N]`` (stable in logit space)."""
    p = torch.sigmoid(logits)
    return F.softplus(logits) - p * logits


def advantages(
    rewards: torch.Tensor, baseline: float | None = None, normalize: bool = True
) -> torch.Tensor:
    """``[K]`` advantages: rewards minus baseline (batch mean if None), optionally normalised."""
    r = rewards.double()
    adv = r - (r.mean() if baseline is None else baseline)
    if normalize and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
    return adv.float()


class ReinforceTerms(NamedTuple):
    """The two terms of the loss above, both scalars with grad."""

    pg: torch.Tensor
    """``-1/K sum_k A_k log pi(a_k)``: the policy-gradient term."""
    entropy: torch.Tensor
    """``mean_i H(p_i)``: the mean per-filter entropy in nats."""

    def total(self, entropy_coef: float) -> torch.Tensor:
        """The loss to minimise, ``pg - beta * entropy``."""
        return self.pg - entropy_coef * self.entropy


def reinforce_loss(
    logits: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor
) -> ReinforceTerms:
    """The REINFORCE loss above, as its two terms (``.total(beta)`` is the loss).

    Args:
        logits: ``[N]`` keep logits (with grad).
        actions: ``[K, N]`` sampled 0/1 masks.
        adv: ``[K]`` advantages (no grad).
    """
    a = actions.float()
    # log pi(a) = a*log(p) + (1-a)*log(1-p) = -BCE(logits, a), summed over filters.
    logp = -F.binary_cross_entropy_with_logits(logits.expand_as(a), a, reduction="none").sum(dim=1)
    pg = -(adv.detach() * logp).mean()
    return ReinforceTerms(pg, bernoulli_entropy(logits).mean())


def sample_masks(probs: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[k, N]`` Bernoulli(p) keep masks drawn from ``generator`` (reproducible)."""
    u = torch.rand(k, probs.numel(), generator=generator)
    return (u < probs.detach().reshape(1, -1)).float()
