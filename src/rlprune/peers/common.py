"""What the peer methods share: typed results, the equal fine-tune budget, the MAC check."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from rlprune.config import PruneConfig
from rlprune.data import Split
from rlprune.errors import ConfigError, PruningError
from rlprune.models import set_layout
from rlprune.pruning import count_macs_params
from rlprune.train import fine_tune

__all__ = ["TOLERANCE", "PeerResult", "RandomSearchResult", "TpIterativeResult"]

log = logging.getLogger(__name__)

TOLERANCE = 0.02
"""Final MACs within +-2% (relative) of the target, as for the heuristics."""


@dataclass
class PeerResult:
    """What a peer method hands back to ``rlprune compare``.

    Attributes:
        model: the pruned, fine-tuned network (eval mode, in ``cfg.channels_last`` layout).
        kept: channels kept per unit name (every unit of :func:`~rlprune.pruning.find_units`).
        macs_ratio: exact MACs of ``model`` / MACs of the input model.
        search_s: seconds spent choosing and cutting channels (fine-tuning excluded).
        finetune_s: seconds spent fine-tuning.
        finetune_steps: SGD steps of fine-tuning in total (equals the budget ``ft_steps``).
    """

    model: nn.Module
    kept: dict[str, int]
    macs_ratio: float
    search_s: float
    finetune_s: float
    finetune_steps: int


@dataclass
class TpIterativeResult(PeerResult):
    """:class:`PeerResult` plus the pruning ratios the bisection solved.

    Attributes:
        ratios: final pruning ratio per unit name (all equal unless no uniform ratio could
            meet the MAC target, see :mod:`rlprune.peers.torchpruning`).
        dry_runs: pruner dry runs the bisection took.
    """

    ratios: dict[str, float]
    dry_runs: int


@dataclass
class RandomSearchResult(PeerResult):
    """:class:`PeerResult` plus the search's own numbers.

    Attributes:
        candidates: candidates scored on the reward set.
        best_reward_acc: adaptive-BN accuracy (%) of the chosen candidate on the reward set.
    """

    candidates: int
    best_reward_acc: float


def check_target(target_macs: float, ft_steps: int) -> None:
    """Raise :class:`ConfigError` for a target outside (0, 1] or a negative budget."""
    if not 0 < target_macs <= 1:
        raise ConfigError(f"target_macs must be in (0, 1], got {target_macs}")
    if ft_steps < 0:
        raise ConfigError(f"ft_steps must be >= 0, got {ft_steps}")


def tune(
    model: nn.Module,
    train: Split,
    steps: int,
    cfg: PruneConfig,
    gen: torch.Generator,
    *,
    hflip: bool,
    device: torch.device | str,
    progress: bool,
    desc: str,
) -> int:
    """:func:`~rlprune.train.fine_tune` with the comparison's shared hyper-parameters (same
    lr, batch size, weight decay and augmentation as every method); returns ``steps``."""
    set_layout(model, cfg.channels_last)  # the layout rl's search fine-tunes in
    fine_tune(
        model,
        train,
        steps,
        cfg.finetune_lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        hflip=hflip,
        generator=gen,
        device=device,
        progress=progress,
        desc=desc,
    )
    return max(0, steps)


def check_macs(
    name: str, model: nn.Module, example: torch.Tensor, base_macs: int, target: float
) -> float:
    """Exact MAC ratio of ``model`` (counted on the CPU); :class:`PruningError` if it misses
    ``target`` by more than :data:`TOLERANCE`."""
    dev = next(model.parameters()).device
    ratio = count_macs_params(model, example.to(dev))[0] / base_macs
    if abs(ratio / target - 1) > TOLERANCE:
        raise PruningError(
            f"{name}: reached {ratio:.3f} of the MACs, not {target:.3f} (+-{TOLERANCE:.0%}); "
            "min_keep may forbid the target"
        )
    return ratio
