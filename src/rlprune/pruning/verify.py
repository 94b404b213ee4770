"""Which units can be pruned correctly: the masked-vs-cut check run before any search.

The search scores masks with forward hooks (:class:`~rlprune.pruning.UnitMask`) and then cuts
the chosen channels with torch-pruning (:func:`~rlprune.pruning.remove_channels`). Both must
agree, or the agent optimises a model that is never built. Every unit is checked once per model:
the logits on a small probe batch with a random mask applied by hooks must equal the logits of
a copy with those channels physically removed. A unit that fails (a forward that hard-codes a
channel count, an op torch-pruning does not couple, a grouped conv shared by two units) is
skipped with one warning naming it and why; :func:`skipped_units` lists them for the report.

The verdicts live on the model object (``_rlprune_unit_checks``), so a copy made with
``copy.deepcopy`` inherits them and does not re-check or re-warn; a unit whose channel counts
or members change (after a cut) is checked again.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.utils._pytree import tree_leaves

from rlprune.pruning.masking import UnitMask
from rlprune.pruning.surgery import remove_channels
from rlprune.pruning.units import Unit, trace_units

__all__ = ["check_unit", "find_units", "skipped_units"]

log = logging.getLogger(__name__)

_ATTR = "_rlprune_unit_checks"
_PROBE = 4  # probe batch: the example input and noisy copies of it


def _cache(model: nn.Module) -> dict[str, dict[Any, str | None]]:
    """``{"verdicts": unit key -> reason or None, "skipped": unit name -> reason}``."""
    cache = model.__dict__.get(_ATTR)
    if cache is None:
        cache = {"verdicts": {}, "skipped": {}}
        object.__setattr__(model, _ATTR, cache)
    return cache


def _probe_batch(example_input: torch.Tensor) -> torch.Tensor:
    """``[_PROBE, C, H, W]``: the example and noisy copies (own generator: the global RNG, and
    so every seeded search, is untouched)."""
    x = example_input[:1].detach().float().cpu()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(_PROBE - 1, *x.shape[1:], generator=g) * (x.std() + 1e-3)
    return torch.cat([x, x + noise]).to(example_input)


def _random_mask(channels: int) -> torch.Tensor:
    """A fixed random ``[channels]`` 0/1 mask keeping at least one and dropping at least one."""
    g = torch.Generator().manual_seed(channels)
    mask = (torch.rand(channels, generator=g) < 0.5).float()
    mask[int(torch.randint(channels, (1,), generator=g))] = 1.0
    if mask.all():
        mask[0] = 0.0
    return mask


def _same(a: Any, b: Any) -> bool:
    la, lb = tree_leaves(a), tree_leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        if not isinstance(x, torch.Tensor):
            continue
        if not isinstance(y, torch.Tensor) or x.shape != y.shape:
            return False
        tol = 1e-4 * (1.0 + float(x.detach().abs().max())) if x.numel() else 0.0
        if not torch.allclose(x.float(), y.float(), rtol=1e-3, atol=tol):
            return False
    return True


def check_unit(model: nn.Module, unit: Unit, example_input: torch.Tensor) -> str | None:
    """Why ``unit`` cannot be pruned correctly, or None if masking it equals cutting it.

    Masks a fixed random half of the unit's channels with hooks on ``model`` and compares the
    outputs on a probe batch with those of a copy whose channels were removed. ``model`` is
    left unchanged (eval mode during the check).
    """
    if unit.channels < 2:
        return None
    was_training = model.training
    model.eval()
    mask = _random_mask(unit.channels)
    x = _probe_batch(example_input)
    try:
        with UnitMask(model, unit) as hooks, torch.no_grad():
            hooks.set(mask)
            masked = model(x)
        cut = copy.deepcopy(model)
        remove_channels(cut, unit, mask, example_input[:1], min_keep=1)  # traces: needs grad
        with torch.no_grad():
            pruned = cut(x)
    except Exception as e:  # the reason is reported, whatever the failure
        msg = (str(e).strip().splitlines() or ["no message"])[0][:200]
        return f"the forward breaks once it is cut ({type(e).__name__}: {msg})"
    finally:
        model.train(was_training)
    if not _same(masked, pruned):
        return "masked outputs differ from the pruned model's (an op couples channels unseen)"
    return None


def find_units(
    model: nn.Module,
    example_input: torch.Tensor,
    exclude: Iterable[str] = (),
    graph: tp.DependencyGraph | None = None,
    check: bool = True,
) -> list[Unit]:
    """The prunable units of ``model`` in forward (module) order, without those that cannot be
    pruned correctly (each skipped with one warning; see :func:`skipped_units`).

    Args:
        model: any CNN built from standard layers.
        example_input: ``[1, C, H, W]`` input used to trace the graph (and to probe).
        exclude: module names never to prune; a unit touching an excluded PRODUCER is dropped.
        graph: a graph already built for ``model`` (rebuilt if None).
        check: run the masked-vs-cut check (cached per model and unit).

    Raises:
        PruningError: the model cannot be traced, or it has no prunable conv.
    """
    found = trace_units(model, example_input, exclude, graph)
    if not check:
        return [u for u, _ in found]
    cache = _cache(model)
    verdicts, skipped = cache["verdicts"], cache["skipped"]
    kept: list[Unit] = []
    for u, reason in found:
        key = (u.name, u.channels, u.producers, u.consumers, u.maps)
        if key not in verdicts:
            why = reason or check_unit(model, u, example_input)
            verdicts[key] = why
            if why is not None and u.name not in skipped:
                log.warning("unit %s is not pruned: %s", u.name, why)
                skipped[u.name] = why
        if verdicts[key] is None:
            kept.append(u)
    return [replace(u, depth=i) for i, u in enumerate(kept)]


def skipped_units(model: nn.Module) -> dict[str, str]:
    """Units of ``model`` (or of the model it was copied from) that were not pruned, with why."""
    cache = model.__dict__.get(_ATTR)
    return {} if cache is None else {str(k): str(v) for k, v in cache["skipped"].items()}
