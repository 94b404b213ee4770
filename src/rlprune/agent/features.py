"""Per-filter state of a unit: what the policy sees.

``features`` state, one row per channel of the unit, each column z-scored within the unit:

    0 L1 norm of the filter (summed over the unit's producer convs; Li et al. 2017)
    1 L2 norm of the filter
    2 |BN gamma| (mean over the unit's BNs; 0 if none; Liu et al. 2017, Network Slimming)
    3 mean activation after ReLU at the unit's outputs (calibration batch)
    4 APoZ: fraction of non-positive outputs (Hu et al. 2016)
    5 first-order Taylor importance |mean(a * dL/da)| (Molchanov et al. 2017)

followed by four unit-context columns (same for every filter): relative depth, log2(channels)/10,
the unit's share of the model MACs, and the model MACs kept so far (fraction of the baseline).

``weights`` state (Huang et al. 2018): the unit's root-conv filter weights, flattened, divided
by their standard deviation; its width depends on the layer, so it needs a per-unit policy.
"""

from __future__ import annotations

import torch
from torch import nn

from rlprune.pruning import Unit, activation_statistics, bn_gamma, filter_l1, filter_l2

__all__ = ["FEATURE_DIM", "IMPORTANCE_PRIOR", "feature_state", "unit_statistics", "weight_state"]

FILTER_FEATURES = 6
CONTEXT_FEATURES = 4
FEATURE_DIM = FILTER_FEATURES + CONTEXT_FEATURES
# Importance prior over the z-scored filter columns (L1, L2, |gamma|, act, APoZ, Taylor):
# larger norms, scales, activations and Taylor scores -> keep; many zeros -> prune.
IMPORTANCE_PRIOR = (0.5, 0.0, 0.5, 0.5, -0.5, 1.0)


def _zscore(x: torch.Tensor) -> torch.Tensor:
    """Column-wise z-score; constant columns become 0."""
    std = x.std(dim=0, unbiased=False, keepdim=True)
    return (x - x.mean(dim=0, keepdim=True)) / torch.where(std > 1e-12, std, torch.ones_like(std))


def unit_statistics(model: nn.Module, unit: Unit, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Raw per-filter statistics ``[C, 6]`` (columns as in the module docstring).

    The scores come from :mod:`rlprune.pruning.importance`; the activation columns from one
    forward + backward over the calibration batch ``x [B, C_in, H, W]``, ``y [B]``. The model's
    weights and mode are left unchanged (gradients are cleared).
    """
    acts = activation_statistics(model, unit, x, y)
    return torch.stack(
        [
            filter_l1(model, unit, reduce_on_cpu=True),
            filter_l2(model, unit, reduce_on_cpu=True),
            bn_gamma(model, unit),
            acts.mean_act,
            acts.apoz,
            acts.taylor,
        ],
        dim=1,
    )


def feature_state(
    stats: torch.Tensor, unit: Unit, num_units: int, macs_kept: float
) -> torch.Tensor:
    """Normalised state ``[C, FEATURE_DIM]`` from raw statistics ``[C, 6]``."""
    c = stats.shape[0]
    context = torch.tensor(
        [
            unit.depth / max(1, num_units - 1),
            float(torch.log2(torch.tensor(float(c)))) / 10.0,
            unit.mac_share,
            macs_kept,
        ]
    )
    return torch.cat([_zscore(stats.float()), context.expand(c, -1)], dim=1)


def weight_state(model: nn.Module, unit: Unit) -> torch.Tensor:
    """Huang et al.'s state: root-conv filters flattened, ``[C, C_in/groups * k * k]``."""
    conv = dict(model.named_modules())[unit.name]
    assert isinstance(conv, nn.Conv2d)
    w = conv.weight.detach().flatten(1).cpu()
    return w / (w.std() + 1e-12)
