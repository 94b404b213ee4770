"""Masked evaluation: zero a unit's channels with forward hooks, without changing any shape.

Zeroing channel k at the output of every producer of a unit (conv and BN outputs, residual
branches included) makes every later layer see exactly what it would see if channel k had been
removed: ReLU(0) = 0, pooling keeps zeros, and the consumers' input weights for k multiply zeros.
The consumers' inputs are masked too, so an op between producer and consumer that does not
keep zeros (``sigmoid``, ``x + 1``) cannot leak a removed channel into them. So masked logits
equal the physically pruned model's logits (checked by a property test, and per unit before a
search by :func:`rlprune.pruning.find_units`).

Members that see the unit through a map (a concat slice, a flattened linear input, a grouped
conv's tied channels) get the mask spread onto their own channels (:meth:`Unit.spread`).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn

from rlprune.errors import PruningError
from rlprune.pruning.units import Unit

__all__ = ["UnitMask"]


def _apply(mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t [B, C, ...]`` times ``mask [C]`` (whole batch) or ``[B, C]`` (per sample)."""
    rows = mask.shape[0] if mask.dim() == 2 else 1
    return t * mask.view(rows, -1, *([1] * (t.dim() - 2))).to(t)


class UnitMask:
    """Forward hooks that multiply a unit's channels by a 0/1 mask.

    The mask can be swapped with :meth:`set` without re-registering hooks (many rollouts per
    unit); ``set(None)`` disables it. Use as a context manager, or call :meth:`remove`.

    A failure inside a hook (a member whose tensor does not have the unit's channels) is raised
    as :class:`~rlprune.errors.PruningError` naming the unit and the module.

    Args:
        model: the live model (not copied).
        unit: the unit whose producers (outputs) and consumers (inputs) get hooks.
    """

    def __init__(self, model: nn.Module, unit: Unit) -> None:
        self.unit = unit
        self._mask: torch.Tensor | None = None
        mods = dict(model.named_modules())
        self._handles = [
            mods[n].register_forward_hook(self._out_hook(n)) for n in unit.producers
        ] + [mods[n].register_forward_pre_hook(self._in_hook(n)) for n in unit.consumers]

    def _masked(self, name: str, t: torch.Tensor, inputs: bool) -> torch.Tensor:
        """``t [B, N, ...]`` with the unit's channels masked as member ``name`` sees them."""
        assert self._mask is not None
        try:
            return _apply(self.unit.spread(self._mask, name, t.shape[1], inputs), t)
        except Exception as e:  # a member whose tensor does not carry the unit's channels
            side = "input" if inputs else "output"
            raise PruningError(
                f"unit {self.unit.name}: cannot mask the {side} of module {name} "
                f"(shape {tuple(t.shape)}, unit of {self.unit.channels} channels): "
                f"{type(e).__name__}: {e}"
            ) from e

    def _out_hook(self, name: str) -> Any:
        def hook(_m: nn.Module, _inp: tuple[Any, ...], out: Any) -> torch.Tensor | None:
            if self._mask is None:
                return None
            return self._masked(name, out, inputs=False)

        return hook

    def _in_hook(self, name: str) -> Any:
        def hook(_m: nn.Module, inp: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if self._mask is None or not inp or not isinstance(inp[0], torch.Tensor):
                return None
            return (self._masked(name, inp[0], inputs=True), *inp[1:])

        return hook

    def set(self, mask: torch.Tensor | None) -> None:
        """Install ``mask`` (``[C]``, or ``[B, C]`` per sample; 1 = keep), or None to disable."""
        if mask is not None and mask.shape[-1] != self.unit.channels:
            raise ValueError(f"mask has {mask.shape[-1]} channels, unit has {self.unit.channels}")
        if mask is not None and mask.dim() not in (1, 2):
            raise ValueError(f"mask must be [C] or [B, C], got shape {tuple(mask.shape)}")
        self._mask = None if mask is None else mask.detach().float()

    def remove(self) -> None:
        """Remove the hooks; the model is exactly as before."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> UnitMask:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
