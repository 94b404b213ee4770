"""Filter importance: every per-channel score of a unit, in one place.

Two families, both returning one score per output channel of a :class:`~rlprune.pruning.Unit`
(``[unit.channels]``, float32, on the CPU; higher = more important, except APoZ):

- Per-unit scores read off the weights or one calibration pass: :func:`filter_l1`,
  :func:`filter_l2`, :func:`bn_gamma` / :func:`bn_scale` and :func:`activation_statistics`
  (mean activation, APoZ and first-order Taylor from a single forward + backward). The agent's
  feature state (:func:`rlprune.agent.features.unit_statistics`) is built from these.
- Group scores from torch-pruning's importance classes on dependency groups, scored for many
  units at once: :func:`group_magnitude` and :func:`group_taylor` (the heuristic baselines).

This package never imports the agent (:mod:`rlprune.agent`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from rlprune.models import training_layout
from rlprune.pruning.units import Unit, build_graph

__all__ = [
    "ActivationStats",
    "activation_statistics",
    "bn_gamma",
    "bn_scale",
    "filter_l1",
    "filter_l2",
    "group_magnitude",
    "group_taylor",
]

log = logging.getLogger(__name__)


def _conv_rows(model: nn.Module, unit: Unit, to_cpu: bool) -> list[tuple[str, torch.Tensor]]:
    """Detached filters of the unit's producer convs, each ``(name, [N, C_in/groups * k * k])``
    (``N`` the conv's output channels; :meth:`Unit.gather` maps them onto the unit's)."""
    mods = dict(model.named_modules())
    rows: list[tuple[str, torch.Tensor]] = []
    for n in unit.producers:
        m = mods[n]
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach().flatten(1)
            rows.append((n, w.cpu() if to_cpu else w))
    return rows


def filter_l1(model: nn.Module, unit: Unit, *, reduce_on_cpu: bool = False) -> torch.Tensor:
    """L1 norm of each filter, summed over the unit's producer convs. Returns ``[C]``.

    The magnitude criterion of Li et al. 2017 ("Pruning Filters for Efficient ConvNets").

    Args:
        model: the model ``unit`` belongs to.
        unit: the unit; only its ``nn.Conv2d`` producers count (BNs carry no filter).
        reduce_on_cpu: copy the weights to the CPU before summing (the agent's feature state
            does) rather than summing where they live (surgery and the baselines do). Equal on
            the CPU; on an accelerator the summation order, so the last bits, may differ.
    """
    total = torch.zeros(unit.channels)
    for n, w in _conv_rows(model, unit, reduce_on_cpu):
        total += unit.gather(w.abs().sum(1).cpu(), n)
    return total


def filter_l2(model: nn.Module, unit: Unit, *, reduce_on_cpu: bool = False) -> torch.Tensor:
    """L2 norm of each filter over all the unit's producer convs together. Returns ``[C]``.

    ``sqrt(sum over convs of sum w**2)``: one norm of the concatenated filters, not a sum of
    per-conv norms. ``reduce_on_cpu`` as in :func:`filter_l1`.
    """
    total = torch.zeros(unit.channels)
    for n, w in _conv_rows(model, unit, reduce_on_cpu):
        total += unit.gather(w.pow(2).sum(1).cpu(), n)
    return total.sqrt()


def bn_gamma(model: nn.Module, unit: Unit) -> torch.Tensor:
    """``|gamma|`` of each channel, averaged over the unit's ``BatchNorm2d``s; 0 if it has none.

    The channel scaling factor of Network Slimming (Liu et al. 2017), as the agent's feature
    state uses it: ``sum_i |gamma_i| / n``, accumulated BN by BN. Returns ``[C]``.
    """
    mods = dict(model.named_modules())
    bns = [n for n in unit.producers if isinstance(mods[n], nn.BatchNorm2d)]
    gamma = torch.zeros(unit.channels)
    for n in bns:
        gamma += unit.gather(mods[n].weight.detach().abs().cpu(), n, mean=True) / len(bns)
    return gamma


def bn_scale(model: nn.Module, unit: Unit) -> torch.Tensor | None:
    """Network Slimming's score (Liu et al. 2017) as the ``bn-scale`` baseline ranks it.

    ``mean(|gamma|)`` over the unit's affine batch norms (any ``_BatchNorm``), computed as one
    stacked mean, so for three or more BNs it may differ from :func:`bn_gamma` in the last bit.

    Returns:
        ``[C]`` float32, or ``None`` if the unit has no BN scale (the caller decides what an
        unscored unit means).
    """
    mods = dict(model.named_modules())
    bns = [n for n in unit.producers if isinstance(mods[n], nn.modules.batchnorm._BatchNorm)]
    gammas = [
        unit.gather(mods[n].weight.detach().abs().cpu(), n, mean=True)
        for n in bns
        if mods[n].weight is not None
    ]
    if not gammas:
        return None
    return torch.stack(gammas).mean(0).float()


@dataclass(frozen=True)
class ActivationStats:
    """Per-channel statistics of a unit's outputs on a calibration batch, each ``[C]``.

    Attributes:
        mean_act: mean activation after ReLU, ``mean(max(a, 0))`` over batch and space.
        apoz: Average Percentage of Zeros (Hu et al. 2016, "Network Trimming"): fraction of
            non-positive outputs (the zeros after the ReLU); high = prunable.
        taylor: first-order Taylor importance ``|mean(a * dL/da)|`` (Molchanov et al. 2017,
            "Pruning Convolutional Neural Networks for Resource Efficient Inference").
    """

    mean_act: torch.Tensor
    apoz: torch.Tensor
    taylor: torch.Tensor


def activation_statistics(
    model: nn.Module, unit: Unit, x: torch.Tensor, y: torch.Tensor
) -> ActivationStats:
    """Mean activation, APoZ and Taylor of ``unit`` from ONE forward + backward pass.

    The outputs are tapped at the unit's ``BatchNorm2d``s if it has any, else at its convs
    (pre-ReLU ``a [B, C, H, W]``); with several taps (a residual unit) mean activation and APoZ
    are averaged over them and Taylor is summed. The loss is cross-entropy in eval mode.

    Args:
        model: the model; its weights and train/eval mode are left unchanged and its gradients
            are cleared (``None``) afterwards.
        unit: a unit of ``model``.
        x: calibration images ``[B, C_in, H, W]`` on the model's device.
        y: labels ``[B]``.
    """
    mods = dict(model.named_modules())
    convs = [n for n in unit.producers if isinstance(mods[n], nn.Conv2d)]
    bns = [n for n in unit.producers if isinstance(mods[n], nn.BatchNorm2d)]
    taps = bns if bns else convs
    outs: list[tuple[str, torch.Tensor]] = []

    def tap(name: str) -> Any:
        def keep(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            out.retain_grad()
            outs.append((name, out))

        return keep

    handles = [mods[n].register_forward_hook(tap(n)) for n in taps]
    was_training = model.training
    model.eval()
    try:
        model.zero_grad(set_to_none=True)
        with training_layout(model):
            F.cross_entropy(model(x), y).backward()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    c = unit.channels
    act = torch.zeros(c)
    apoz = torch.zeros(c)
    taylor = torch.zeros(c)
    for name, out in outs:
        o = out.detach().cpu()
        dims = [d for d in range(o.dim()) if d != 1]
        act += unit.gather(o.clamp_min(0).mean(dim=dims), name, mean=True) / len(outs)
        apoz += unit.gather((o <= 0).float().mean(dim=dims), name, mean=True) / len(outs)
        if out.grad is not None:
            taylor += unit.gather((o * out.grad.cpu()).mean(dim=dims).abs(), name)
    model.zero_grad(set_to_none=True)
    return ActivationStats(mean_act=act, apoz=apoz, taylor=taylor)


def _group_scores(
    model: nn.Module,
    units: list[Unit],
    graph: tp.DependencyGraph,
    imp: tp.importance.Importance,
) -> dict[str, torch.Tensor]:
    """``imp`` on each unit's full dependency group: unit name -> ``[C]`` (NaN -> 0)."""
    mods = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for u in units:
        root = mods[u.name]
        local, _ = u.index(u.name)  # the root's channels (all of a grouped conv's groups)
        group = graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs=sorted(local))
        score = imp(group)
        if score is None:  # a group with no parameterised layer (not in the zoo)
            out[u.name] = torch.full((u.channels,), math.inf)
            continue
        full = torch.nan_to_num(score.detach().float().cpu(), nan=0.0)
        out[u.name] = u.gather(full, u.name, mean=True)  # [C] in root order -> unit channels
    return out


def group_magnitude(
    model: nn.Module, units: list[Unit], example_input: torch.Tensor
) -> dict[str, torch.Tensor]:
    """torch-pruning's group L2 magnitude (``MagnitudeImportance(p=2)``) of every unit.

    The L2 norm of each channel's weights over every layer of its dependency group, reduced
    and normalised by the mean within the unit as torch-pruning's global pruning does (the
    group form of Li et al. 2017's magnitude criterion).

    Args:
        model: the model (gradients are cleared afterwards).
        units: units of ``model``.
        example_input: ``[1, C, H, W]`` for tracing.

    Returns:
        Unit name -> ``[C]`` float32 on the CPU.
    """
    graph = build_graph(model, example_input)
    try:
        return _group_scores(model, units, graph, tp.importance.MagnitudeImportance(p=2))
    finally:
        model.zero_grad(set_to_none=True)


def group_taylor(
    model: nn.Module,
    units: list[Unit],
    example_input: torch.Tensor,
    calib: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """torch-pruning's ``TaylorImportance`` of every unit after one backward on ``calib``.

    First-order Taylor ``|w * dL/dw|`` over each channel's dependency group (Molchanov et al.
    2019, "Importance Estimation for Neural Network Pruning"), normalised like
    :func:`group_magnitude`. The loss is cross-entropy in the model's current mode.

    Args:
        model: the model (gradients are cleared afterwards).
        units: units of ``model``.
        example_input: ``[1, C, H, W]`` for tracing.
        calib: images ``[B, C_in, H, W]`` and labels ``[B]`` (moved to the model's device).

    Returns:
        Unit name -> ``[C]`` float32 on the CPU.
    """
    graph = build_graph(model, example_input)  # tracing clears .grad: build it first
    dev = next(model.parameters()).device
    try:
        model.zero_grad(set_to_none=True)
        with training_layout(model):
            F.cross_entropy(model(calib[0].to(dev)), calib[1].to(dev)).backward()
        return _group_scores(model, units, graph, tp.importance.TaylorImportance())
    finally:
        model.zero_grad(set_to_none=True)
