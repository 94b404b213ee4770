"""Masked evaluation: zero a unit's channels with forward hooks, without changing any shape.

Zeroing channel k at the output of every producer of a unit (conv and BN outputs, residual
branches included) makes every later layer see exactly what it would see if channel k had been
removed: ReLU(0) = 0, pooling keeps zeros, and the consumers' input weights for k multiply zeros.
So masked logits equal the physically pruned model's logits (checked by a property test).
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn

from rlprune.pruning.units import Unit

__all__ = ["UnitMask"]


class UnitMask:
    """Forward hooks that multiply a unit's channels by a 0/1 mask.

    The mask can be swapped with :meth:`set` without re-registering hooks (many rollouts per
    unit); ``set(None)`` disables it. Use as a context manager, or call :meth:`remove`.

    Args:
        model: the live model (not copied).
        unit: the unit whose producers get hooks.
    """

    def __init__(self, model: nn.Module, unit: Unit) -> None:
        self.unit = unit
        self._mask: torch.Tensor | None = None
        mods = dict(model.named_modules())
        self._handles = [mods[n].register_forward_hook(self._hook) for n in unit.producers]

    def _hook(
        self, _m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor
    ) -> torch.Tensor | None:
        if self._mask is None:
            return None
        # [C] -> one mask for the whole batch; [B, C] -> one mask per sample (batched scoring)
        rows = self._mask.shape[0] if self._mask.dim() == 2 else 1
        view = self._mask.view(rows, -1, *([1] * (out.dim() - 2))).to(out)
        return out * view

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
