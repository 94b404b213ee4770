"""The learning agent: a policy network, its optimiser and its reward baseline."""

from __future__ import annotations

from typing import Any

import torch

from rlprune.agent.features import FEATURE_DIM, IMPORTANCE_PRIOR
from rlprune.agent.policy import PolicyNetwork
from rlprune.agent.reinforce import (
    PolicyStats,
    advantages,
    bernoulli_entropy,
    reinforce_loss,
    sample_masks,
)
from rlprune.config import AgentConfig

__all__ = ["Agent"]


class Agent:
    """REINFORCE agent over per-filter keep/prune actions.

    With ``features`` state one policy is shared across all units (what it learns on one layer
    carries to the next); with ``weights`` state (Huang et al.) :meth:`reset` builds a fresh
    policy for each unit, because the state width differs per layer.

    Args:
        in_dim: state width per filter.
        cfg: agent hyper-parameters.
        seed: seeds the policy's initial weights.
    """

    def __init__(self, in_dim: int, cfg: AgentConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.reset(in_dim, seed)

    def reset(self, in_dim: int, seed: int | None = None) -> None:
        """A new policy and optimiser (and no baseline) for a state of width ``in_dim``."""
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed if seed is None else seed)
        prior = None
        if in_dim == FEATURE_DIM and self.cfg.prior > 0:
            prior = self.cfg.prior * torch.tensor(IMPORTANCE_PRIOR)
        self.policy = PolicyNetwork(in_dim, self.cfg.hidden, self.cfg.init_keep, prior)
        torch.random.set_rng_state(gen_state)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr)
        self.baseline: float | None = None

    def new_unit(self) -> None:
        """Start a unit: the shared policy keeps its weights, the keep level restarts."""
        self.policy.reset_level()
        self.baseline = None

    @torch.no_grad()
    def probs(self, state: torch.Tensor) -> torch.Tensor:
        """Keep probabilities ``[C]`` for a state ``[C, in_dim]``."""
        return self.policy.keep_prob(state)

    def sample(self, state: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[K, C]`` masks, K = ``cfg.samples``."""
        return sample_masks(self.probs(state), self.cfg.samples, generator)

    def update(
        self, state: torch.Tensor, masks: torch.Tensor, rewards: torch.Tensor
    ) -> PolicyStats:
        """One policy-gradient step on ``K`` scored masks.

        Args:
            state: ``[C, in_dim]``.
            masks: ``[K, C]`` the sampled actions.
            rewards: ``[K]`` their rewards.
        """
        cfg = self.cfg
        if cfg.baseline == "moving-average":
            base = float(rewards.mean()) if self.baseline is None else self.baseline
            adv = advantages(rewards, base, cfg.normalize_advantage)
            m = cfg.baseline_momentum
            self.baseline = m * base + (1 - m) * float(rewards.mean())
        else:
            adv = advantages(rewards, None, cfg.normalize_advantage)
        logits = self.policy(state)
        terms = reinforce_loss(logits, masks, adv)
        self.opt.zero_grad(set_to_none=True)
        terms.total(cfg.entropy_coef).backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            logits = self.policy(state)
            return PolicyStats(
                pg_loss=float(terms.pg),
                entropy=float(bernoulli_entropy(logits).mean()),
                mean_keep=float(torch.sigmoid(logits).mean()),
                reward_mean=float(rewards.mean()),
                reward_max=float(rewards.max()),
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "opt": self.opt.state_dict(),
            "baseline": self.baseline,
            "in_dim": self.policy.in_dim,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if int(d["in_dim"]) != self.policy.in_dim:
            self.reset(int(d["in_dim"]))
        self.policy.load_state_dict(d["policy"])
        self.opt.load_state_dict(d["opt"])
        self.baseline = d["baseline"]
