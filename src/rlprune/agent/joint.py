"""One policy over every filter of the network, with a learnable keep level per unit.

The same :class:`~rlprune.agent.policy.PolicyNetwork` reads each filter's state; a per-unit
offset is added to its logit. Trained jointly by REINFORCE on whole-network masks, the offsets
carry the allocation across layers (their gradient sums the advantage over all of a unit's
filters, so it is learnt from few episodes) and the shared network the choice within a unit,
in the spirit of DECORE's per-channel agents (Alwani et al., CVPR 2022).
"""

from __future__ import annotations

import torch
from torch import nn

from rlprune.agent.agent import Agent
from rlprune.agent.features import FEATURE_DIM
from rlprune.agent.policy import PolicyNetwork
from rlprune.config import AgentConfig

__all__ = ["JointAgent", "JointPolicy"]


class JointPolicy(nn.Module):
    """``logit_i = base(state_i) + level[owner_i]``, or with a ``prior``
    ``logit_i = prior_i + delta_i + level[owner_i]`` (``delta`` learnt, starting at 0).

    Args:
        base: the per-filter policy network (unused with a prior).
        owner: ``[N]`` unit index of each filter.
        units: number of units U.
        prior: ``[N]`` fixed logits, or None.

    Shapes: ``states [N, D] -> logits [N]``.
    """

    owner: torch.Tensor
    prior: torch.Tensor

    def __init__(
        self,
        base: PolicyNetwork,
        owner: torch.Tensor,
        units: int,
        prior: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("owner", owner.long().clone())
        self.levels = nn.Parameter(torch.zeros(units))
        # With a fixed prior the policy is DECORE's: one free logit offset per filter on top of
        # the prior (no shared network), starting at the prior's own decision.
        self.register_buffer("prior", torch.zeros(0) if prior is None else prior.float().clone())
        self.delta = nn.Parameter(torch.zeros_like(self.prior))

    @property
    def in_dim(self) -> int:
        return self.base.in_dim

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if self.prior.numel():
            return self.prior + self.delta + self.levels[self.owner]
        return self.base(states) + self.levels[self.owner]

    def keep_prob(self, states: torch.Tensor) -> torch.Tensor:
        """Keep probabilities ``[N]``."""
        return torch.sigmoid(self(states))

    def reset_level(self) -> None:
        """Levels are learnt across the whole network; nothing restarts per unit."""


class JointAgent(Agent):
    """REINFORCE over whole-network masks (the :class:`Agent` update, a joint policy).

    Args:
        cfg: agent hyper-parameters (``samples`` masks per update).
        owner: ``[N]`` unit index of each filter.
        units: number of units U.
        seed: seeds the policy's initial weights.
        prior: ``[N]`` fixed prior logits (see :class:`JointPolicy`), or None.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        owner: torch.Tensor,
        units: int,
        seed: int = 0,
        prior: torch.Tensor | None = None,
    ) -> None:
        self.owner, self.n_units, self.prior = owner, units, prior
        super().__init__(FEATURE_DIM, cfg, seed)

    def reset(self, in_dim: int, seed: int | None = None) -> None:
        super().reset(in_dim, seed)
        assert isinstance(self.policy, PolicyNetwork)
        self.policy = JointPolicy(  # type: ignore[assignment]
            self.policy, self.owner, self.n_units, self.prior
        )
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr)

    def set_levels(self, levels: torch.Tensor) -> None:
        """Start the per-unit levels ``[U]`` at ``levels``."""
        assert isinstance(self.policy, JointPolicy)
        with torch.no_grad():
            self.policy.levels.copy_(levels)

    @torch.no_grad()
    def base_logits(self, state: torch.Tensor) -> torch.Tensor:
        """Per-filter logits ``[N]`` without the unit levels."""
        assert isinstance(self.policy, JointPolicy)
        return self.policy(state) - self.policy.levels[self.policy.owner]

    @torch.no_grad()
    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """Keep logits ``[N]``."""
        return self.policy(state)
