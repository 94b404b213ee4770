"""Physical removal of a unit's channels through torch-pruning groups (real speed-up)."""

from __future__ import annotations

import logging

import torch
import torch_pruning as tp
from torch import nn

from rlprune.errors import PruningError
from rlprune.models import is_channels_last, set_layout
from rlprune.pruning.importance import filter_l1
from rlprune.pruning.units import Unit, build_graph, resolve_min_keep

__all__ = ["remove_channels"]

log = logging.getLogger(__name__)


def _keep_every_member(model: nn.Module, unit: Unit, keep: torch.Tensor) -> None:
    """A conv that owns a slice of the unit (one input of a concat) cannot lose all of it (no
    zero-channel layer): its channel with the largest filter L1 norm is kept back. ``keep [C]``
    is updated in place."""
    mods = dict(model.named_modules())
    for name in unit.producers:
        _, owned = unit.index(name)
        if not isinstance(mods[name], nn.Conv2d) or keep[owned].any():
            continue
        l1 = filter_l1(model, unit)
        best = owned[int(torch.argmax(l1[owned]))]
        keep[best] = True
        log.warning("%s: the mask empties %s; kept its channel %d", unit.name, name, best)


def remove_channels(
    model: nn.Module,
    unit: Unit,
    keep_mask: torch.Tensor,
    example_input: torch.Tensor,
    min_keep: float = 1,
) -> list[int]:
    """Cut the channels of ``unit`` where ``keep_mask`` is 0, in place, via torch-pruning.

    The model keeps its memory layout: torch-pruning's ``index_select`` hands back NCHW
    tensors, so an NHWC model is put back in NHWC (NHWC is the fast CPU path).

    Guard: if the mask keeps fewer than ``min_keep`` channels (a count if >= 1, else a fraction),
    the channels with the largest filter L1 norm among the pruned ones are kept back, so a layer
    is never emptied.

    Args:
        model: the live model; modified in place.
        unit: a unit of ``model`` as it is now.
        keep_mask: ``[unit.channels]`` 0/1 (or bool).
        example_input: ``[1, C, H, W]`` for tracing.
        min_keep: see above.

    Returns:
        The kept channel indices (ascending, in the unit's current numbering).
    """
    keep = keep_mask.detach().reshape(-1).bool().cpu()
    if keep.numel() != unit.channels:
        raise PruningError(f"mask for {unit.name} has {keep.numel()} entries, not {unit.channels}")
    need = resolve_min_keep(min_keep, unit.channels)
    if int(keep.sum()) < need:
        l1 = filter_l1(model, unit).masked_fill(keep, float("-inf"))
        extra = torch.topk(l1, need - int(keep.sum())).indices
        keep[extra] = True
        log.warning("%s: mask kept too few channels; min_keep guard kept %d", unit.name, need)
    _keep_every_member(model, unit, keep)
    pruned = torch.nonzero(~keep).flatten().tolist()
    kept = torch.nonzero(keep).flatten().tolist()
    if not pruned:
        return kept
    dg = build_graph(model, example_input)
    root = dict(model.named_modules())[unit.name]
    # The root's own channels of the pruned unit channels (all G of a grouped conv's tied ones);
    # torch-pruning carries them to every member through its index mapping.
    local, unit_idx = unit.index(unit.name)
    gone = set(pruned)
    idxs = sorted(lo for lo, u in zip(local, unit_idx, strict=True) if u in gone)
    group = dg.get_pruning_group(root, tp.prune_conv_out_channels, idxs=idxs)
    if not dg.check_pruning_group(group):
        raise PruningError(f"torch-pruning refused to prune {unit.name} to {len(kept)} channels")
    nhwc = is_channels_last(model)
    group.prune()
    if nhwc:
        set_layout(model, True)
    return kept
