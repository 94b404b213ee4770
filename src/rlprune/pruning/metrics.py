"""Exact measurement: MACs and params (torch-pruning's counter), file size. Latency is timed in
:mod:`rlprune.pruning.timing`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch_pruning as tp
from torch import nn

from rlprune.errors import PruningError
from rlprune.pruning.surgery import remove_channels
from rlprune.pruning.units import Unit

_T = TypeVar("_T")

__all__ = [
    "MacModel",
    "UnitMacs",
    "count_macs_params",
    "file_size",
]


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(MACs, params)`` for one example (batch 1), counted by torch-pruning."""
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_input[:1])
    model.train(was_training)
    return int(macs), int(params)


def _probe(
    model: nn.Module, unit: Unit, example_input: torch.Tensor, count: Callable[..., _T]
) -> _T:
    """``count(copy, example_input)`` on a copy of ``model`` with one channel of ``unit`` cut."""
    probe = copy.deepcopy(model)
    mask = torch.ones(unit.channels)
    mask[0] = 0
    try:
        remove_channels(probe, unit, mask, example_input, min_keep=1)
        return count(probe, example_input)
    except PruningError:
        raise
    except Exception as e:  # a forward that hard-codes channel counts breaks here
        raise PruningError(
            f"{unit.name}: the model's forward breaks once this unit is pruned "
            f"({type(e).__name__}: {e}); add it to --set exclude=..."
        ) from e


@dataclass(frozen=True)
class MacModel:
    """Exact MACs of the model as a function of the channels kept in one unit.

    Every layer a unit touches has a cost linear in the unit's channel count (a conv's MACs are
    ``out * in * k^2 * HW``, and a unit changes only one of ``out``/``in``; depthwise convs and
    BNs are linear in ``C``), so two exact counts fix the line: the model as is, and the model
    with one channel removed (on a copy).

    Attributes:
        total: model MACs with all channels of the unit kept.
        per_channel: MACs saved per removed channel.
    """

    total: int
    per_channel: float

    @classmethod
    def measure(cls, model: nn.Module, unit: Unit, example_input: torch.Tensor) -> MacModel:
        total, _ = count_macs_params(model, example_input)
        if unit.channels < 2:
            return cls(total, 0.0)
        less, _ = _probe(model, unit, example_input, count_macs_params)
        return cls(total, float(total - less))

    def macs(self, kept: int | torch.Tensor, channels: int) -> torch.Tensor:
        """Model MACs when ``kept`` of ``channels`` are kept (works on tensors of counts)."""
        k = torch.as_tensor(kept, dtype=torch.float64)
        return self.total - self.per_channel * (channels - k)

    def cost(self, kept: int | torch.Tensor, channels: int) -> torch.Tensor:
        """:meth:`macs`, under the name every unit cost model shares (see ``CostCurve``)."""
        return self.macs(kept, channels)

    def count_for(self, budget: float, channels: int) -> int:
        """The kept count whose MACs are closest to ``budget`` (``channels`` if the unit
        costs nothing); may be outside ``1..channels``: the caller clamps."""
        if self.per_channel <= 0:
            return channels
        return channels - round((self.total - budget) / self.per_channel)


class UnitMacs:
    """Model MACs as a function of the per-unit channel counts (exact for the zoo).

    torch-pruning counts MACs per leaf module (conv, linear, BN, activations, pools). Which
    units' channels pass through which layer is found by removing one channel of each unit on
    a copy and seeing which layer counts change. A layer touched by one unit is affine in its
    count (the probe gives the slope, so a linear layer's bias term is exact); a layer touched
    by several (a conv between two units: ``out * in``) scales with the product of their keep
    ratios, exact for bias-free convs. The pruned model is always counted exactly afterwards.
    """

    def __init__(self, model: nn.Module, units: list[Unit], example_input: torch.Tensor) -> None:
        self.channels = {u.name: u.channels for u in units}
        base = self._layer_macs(model, example_input)
        self.total = float(count_macs_params(model, example_input)[0])
        self.const = self.total - sum(base.values())
        touches: dict[str, dict[str, float]] = {n: {} for n in base}
        for u in units:
            if u.channels < 2:
                continue
            for name, macs in _probe(model, u, example_input, self._layer_macs).items():
                if name in base and macs != base[name]:
                    touches[name][u.name] = base[name] - macs
        # (MACs now, slope per removed channel if one unit touches the layer, touching units)
        self.terms = [
            (base[n], next(iter(t.values())) if len(t) == 1 else 0.0, tuple(t))
            for n, t in touches.items()
            if base[n]
        ]

    @staticmethod
    def _layer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
        was_training = model.training
        model.eval()
        _, _, layer, _ = tp.utils.count_ops_and_params(model, example_input[:1], layer_wise=True)
        model.train(was_training)
        return {
            n: float(layer.get(m, 0.0))
            for n, m in model.named_modules()
            if n and not any(True for _ in m.children())
        }

    def line(self, unit: str) -> MacModel:
        """``unit``'s :class:`MacModel` (every other unit at full width), read off the closed
        form: equal to :meth:`MacModel.measure` without another probe."""
        c = self.channels[unit]
        if c < 2:
            return MacModel(int(self.total), 0.0)
        return MacModel(int(self.total), float(self.total - self({**self.channels, unit: c - 1})))

    def __call__(self, counts: dict[str, int]) -> float:
        total = self.const
        for macs, slope, units in self.terms:
            if len(units) == 1:
                macs -= slope * (self.channels[units[0]] - counts[units[0]])
            else:
                for u in units:
                    macs *= counts[u] / self.channels[u]
            total += macs
        return total


def file_size(path: str | Path) -> int:
    """Size of a file in bytes."""
    return Path(path).stat().st_size
