"""Per-unit keep-ratio actions of the joint search (AMC's action space, He et al. ECCV 2018):
masks from keep-ratio logits, and their projection onto the budget by a common shift."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from rlprune.pruning.units import round_count

if TYPE_CHECKING:
    from rlprune.env.joint import JointEnv

__all__ = ["Allocation", "largest_shift"]

log = logging.getLogger(__name__)


def largest_shift(
    fits: Callable[[float], bool], *, lo: float = -30.0, hi: float = 30.0, iters: int = 60
) -> float:
    """The largest ``d`` in ``[lo, hi]`` with ``fits(d)`` by bisection (``fits`` monotone:
    true below some point, false above; ``lo`` when nothing fits)."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


class Allocation:
    """Masks from per-unit keep-ratio logits ``a [K, U]``: unit u keeps its
    ``round(sigmoid(a_u) * C_u)`` filters of highest prior logit (at least ``min_keep``; on a
    multiple of ``round_to`` or the whole unit, :func:`round_count`)."""

    def __init__(self, env: JointEnv, prior: torch.Tensor) -> None:
        self.env = env
        self.order = [torch.argsort(p, descending=True) for p in env.split(prior)]

    def masks(self, actions: torch.Tensor) -> torch.Tensor:
        rows = []
        for a in actions:
            parts = []
            for order, x, low in zip(self.order, a.tolist(), self.env.min_keep, strict=True):
                c = len(order)
                k = max(low, min(c, math.floor(c / (1 + math.exp(-x)) + 0.5)))
                k = round_count(k, c, self.env.cfg.round_to, low)
                keep = torch.zeros(c)
                keep[order[:k]] = 1.0
                parts.append(keep)
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    def project(self, mu: torch.Tensor, iters: int = 60) -> torch.Tensor:
        """The mask ``[N]`` of ``mu + d`` with the largest common shift ``d`` whose cost
        (:meth:`JointEnv.cost`: MACs or predicted latency) is within the target."""
        env = self.env

        def fits(d: float) -> bool:
            return float(env.cost(self.masks((mu + d)[None]))[0]) <= env.target

        if not fits(-30.0):
            log.warning(
                "%s target %.3g unreachable with min_keep and round_to", env.priced, env.target
            )
        return self.masks((mu + largest_shift(fits, iters=iters))[None])[0]
