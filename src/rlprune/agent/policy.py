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

    Shapes: ``states [N, in_dim] -> logits [N]``.
    """

    def __init__(self, in_dim: int, hidden: int = 64, init_keep: float = 0.85) -> None:
        super().__init__()
        self.in_dim = in_dim
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
        return self.net(states).squeeze(-1)

    def keep_prob(self, states: torch.Tensor) -> torch.Tensor:
        """Keep probabilities ``[N]``."""
        return torch.sigmoid(self(states))
