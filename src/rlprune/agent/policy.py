"""The policy network: per-filter state -> keep logit (Huang et al. 2018, Sec. 3.1)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PolicyNetwork"]


class PolicyNetwork(nn.Module):
    """A small MLP applied to every filter independently.

    ``keep probability = sigmoid(logit)``. The output bias starts at ``logit(init_keep)`` and the
    last layer's weights near zero, so the first masks keep most filters (a gentle start: early
    rollouts that wipe a layer teach nothing).

    Args:
        in_dim: state features per filter.
        hidden: hidden width (two hidden layers).
        init_keep: initial keep probability.
        prior: initial weights of a linear skip path over the state (None: zeros).

    Shapes: ``states [N, in_dim] -> logits [N]``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int = 64,
        init_keep: float = 0.85,
        prior: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.init_keep = init_keep
        # Linear skip path ``prior . state``: with an importance prior the first masks already
        # prune the least important filters more often, so the few rollouts we can afford are
        # spent near good masks; the RL updates then re-weigh it, and set the per-layer level.
        self.skip = nn.Linear(in_dim, 1, bias=False)
        nn.init.zeros_(self.skip.weight)
        if prior is not None:
            with torch.no_grad():
                self.skip.weight[0, : prior.numel()] = prior
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.normal_(last.weight, std=0.01)
        nn.init.constant_(last.bias, math.log(init_keep / (1 - init_keep)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return (self.net(states) + self.skip(states)).squeeze(-1)

    def reset_level(self) -> None:
        """Reset the output bias to ``logit(init_keep)``: a new layer starts its own keep level."""
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.bias.fill_(math.log(self.init_keep / (1 - self.init_keep)))

    def keep_prob(self, states: torch.Tensor) -> torch.Tensor:
        """Keep probabilities ``[N]``."""
        return torch.sigmoid(self(states))
