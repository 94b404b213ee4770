"""Decisions: per-filter state, the policy network and REINFORCE (Huang et al. 2018)."""

from rlprune.agent.agent import Agent
from rlprune.agent.features import FEATURE_DIM, feature_state, unit_statistics, weight_state
from rlprune.agent.policy import PolicyNetwork
from rlprune.agent.reinforce import (
    PolicyStats,
    advantages,
    bernoulli_entropy,
    reinforce_loss,
    sample_masks,
)

__all__ = [
    "FEATURE_DIM",
    "Agent",
    "PolicyNetwork",
    "PolicyStats",
    "advantages",
    "bernoulli_entropy",
    "feature_state",
    "reinforce_loss",
    "sample_masks",
    "unit_statistics",
    "weight_state",
]
