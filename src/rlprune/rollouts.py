"""Scoring rollouts: the accuracy of the model with a unit masked (the search's hot loop).

Three scorers give the same accuracies for the same mask:

* :class:`NaiveScorer` copies the model, cuts the channels physically and runs the whole net
  (the reference; slow).
* :class:`MaskedScorer` masks the live model with forward hooks and runs the whole net.
* :class:`PrefixScorer` runs everything that does not depend on the mask ONCE, caches the
  activations at the frontier, and per rollout runs only the suffix
  (:func:`rlprune.frontier.split_at_frontier` finds the cut with ``torch.fx``).

Memory: the cache is capped by ``cache_mb``; above the cap it is stored in fp16 (not exact any
more) and, if still too large, the reward set is subsampled; a log line says which.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from rlprune.bnadapt import adapted_bn
from rlprune.errors import PruningError
from rlprune.frontier import downstream_bns, split_at_frontier
from rlprune.pruning import Unit, UnitMask, remove_channels

__all__ = [
    "MaskedScorer",
    "NaiveScorer",
    "PrefixScorer",
    "Scorer",
    "accuracy_stderr",
    "make_scorer",
]

log = logging.getLogger(__name__)


def accuracy_stderr(acc_pct: float, n: int) -> float:
    """Binomial standard error (pp) of an accuracy measured on ``n`` images."""
    p = acc_pct / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / max(1, n))


class Scorer(Protocol):
    """Scores masks of one unit on a fixed reward set."""

    n: int

    def accuracy(self, mask: torch.Tensor) -> float:
        """Top-1 accuracy (%) with ``mask [C]`` applied."""
        ...

    def close(self) -> None:
        """Release hooks and caches."""
        ...


def _count_correct(logits: torch.Tensor, y: torch.Tensor) -> int:
    return int((logits.argmax(1) == y).sum())


class _FullPassScorer:
    """Shared set-up of the scorers that run the whole network per mask."""

    def __init__(
        self,
        model: nn.Module,
        unit: Unit,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        calib_x: torch.Tensor | None = None,
    ) -> None:
        self.model, self.unit, self.x, self.y, self.bs = model, unit, x, y, batch_size
        self.n = len(y)
        self.calib_x = calib_x
        # BNs whose statistics the mask changes (re-estimated per mask when calib_x is given)
        self.bn_names = downstream_bns(model, unit) if calib_x is not None else []

    def logits(self, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def accuracy(self, mask: torch.Tensor) -> float:
        return 100.0 * _count_correct(self.logits(mask), self.y) / self.n

    def _forward(self, net: nn.Module) -> torch.Tensor:
        """Logits ``[N, classes]`` of ``net`` on the reward images, in batches."""
        return torch.cat([net(self.x[i : i + self.bs]) for i in range(0, self.n, self.bs)])

    def close(self) -> None:
        pass


class NaiveScorer(_FullPassScorer):
    """Reference: deepcopy, physical cut, full forward, per mask."""

    @torch.inference_mode(False)
    def logits(self, mask: torch.Tensor) -> torch.Tensor:
        pruned = copy.deepcopy(self.model).eval()
        remove_channels(pruned, self.unit, mask, self.x[:1])
        mods = dict(pruned.named_modules())
        bns = [mods[n] for n in self.bn_names]
        calibrate = lambda: _run_batches(pruned, self.calib_x, self.bs)  # noqa: E731
        with adapted_bn(bns, calibrate), torch.inference_mode():
            return self._forward(pruned)


def _run_batches(fn: Callable[..., torch.Tensor], x: torch.Tensor | None, bs: int) -> None:
    if x is not None:
        for i in range(0, len(x), bs):
            fn(x[i : i + bs])


class MaskedScorer(_FullPassScorer):
    """Live model + mask hooks + full forward (fallback for untraceable models)."""

    def __init__(
        self,
        model: nn.Module,
        unit: Unit,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        calib_x: torch.Tensor | None = None,
    ) -> None:
        super().__init__(model.eval(), unit, x, y, batch_size, calib_x)
        self.mask = UnitMask(model, unit)
        mods = dict(model.named_modules())
        self.bns = [mods[n] for n in self.bn_names]

    @torch.inference_mode()
    def logits(self, mask: torch.Tensor) -> torch.Tensor:
        self.mask.set(mask)
        try:
            with adapted_bn(self.bns, lambda: _run_batches(self.model, self.calib_x, self.bs)):
                return self._forward(self.model)
        finally:
            self.mask.set(None)

    def close(self) -> None:
        self.mask.remove()


class PrefixScorer:
    """Prefix cache + suffix-only evaluation (exact; see module docstring).

    Args:
        model: the live model (eval mode; not copied). Hooks for the unit's later producers are
            installed on it until :meth:`close`.
        unit: the unit being explored.
        x: ``[N, C, H, W]`` reward images; y: ``[N]`` labels.
        batch_size: suffix batch size.
        cache_mb: memory cap of the cached activations.
        calib_x: calibration images for adaptive BN (:mod:`rlprune.bnadapt`); None: off.
    """

    def __init__(
        self,
        model: nn.Module,
        unit: Unit,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        cache_mb: float = 512.0,
        calib_x: torch.Tensor | None = None,
    ) -> None:
        model.eval()
        self.prefix, self.suffix, self.is_pre = split_at_frontier(model, unit)
        self.mask = UnitMask(model, unit)  # producers that sit in the suffix
        self.bs = batch_size
        self.cache = self._frontier(x)
        self.calib = self._frontier(calib_x) if calib_x is not None else None
        mods = dict(self.suffix.named_modules())
        self.bns = [
            mods[str(n.target)]
            for n in self.suffix.graph.nodes
            if n.op == "call_module" and isinstance(mods[str(n.target)], nn.BatchNorm2d)
        ]
        self.y = y
        self.exact = True
        self._cap(cache_mb)
        self.n = len(self.y)

    @torch.inference_mode()
    def _frontier(self, x: torch.Tensor) -> list[torch.Tensor]:
        parts = [self.prefix(x[i : i + self.bs]) for i in range(0, len(x), self.bs)]
        return [torch.cat([p[j] for p in parts]) for j in range(len(self.is_pre))]

    def _calibrate(self, m: torch.Tensor) -> None:
        if self.calib is not None:
            for i in range(0, len(self.calib[0]), self.bs):
                self.suffix(m, *[t[i : i + self.bs] for t in self.calib])

    @property
    def cache_mb(self) -> float:
        """Memory held by the cached activations, in MiB."""
        return sum(t.numel() * t.element_size() for t in self.cache) / 2**20

    def _cap(self, cap_mb: float) -> None:
        size = self.cache_mb
        if size <= cap_mb:
            log.info("prefix cache %.1f MiB (cap %.0f MiB)", size, cap_mb)
            return
        self.cache = [t.half() if t.is_floating_point() else t for t in self.cache]
        self.exact = False
        log.info("prefix cache %.1f MiB > cap %.0f MiB: stored in fp16", size, cap_mb)
        if self.cache_mb > cap_mb:
            keep = max(10, int(len(self.y) * cap_mb / self.cache_mb))
            self.cache = [t[:keep] for t in self.cache]
            self.y = self.y[:keep]
            log.info("prefix cache still over the cap: reward set subsampled to %d images", keep)

    @torch.inference_mode()
    def logits(self, mask: torch.Tensor) -> torch.Tensor:
        m = mask.detach().float().reshape(-1)
        self.mask.set(m)
        try:
            with adapted_bn(self.bns if self.calib else [], lambda: self._calibrate(m)):
                out = []
                for i in range(0, len(self.y), self.bs):
                    vals = [t[i : i + self.bs].float() for t in self.cache]
                    out.append(self.suffix(m, *vals))
                return torch.cat(out)
        finally:
            self.mask.set(None)

    def accuracy(self, mask: torch.Tensor) -> float:
        return 100.0 * _count_correct(self.logits(mask), self.y) / self.n

    @torch.inference_mode()
    def accuracies(self, masks: torch.Tensor) -> torch.Tensor:
        """Accuracies ``[K]`` of ``masks [K, C]`` scored together (batched scoring).

        Each cached batch is repeated K times with a per-sample mask, so one suffix pass
        scores all K masks: fewer, larger matrix products (pays off for small late layers).
        """
        if self.calib is not None:  # BN statistics are per mask: no batching across masks
            return torch.tensor([self.accuracy(m) for m in masks], dtype=torch.float64)
        k = masks.shape[0]
        masks = masks.detach().float()
        correct = torch.zeros(k, dtype=torch.long)
        step = max(1, self.bs // k)
        try:
            for i in range(0, len(self.y), step):
                vals = [t[i : i + step].float() for t in self.cache]
                b = vals[0].shape[0]
                rows = masks.repeat_interleave(b, dim=0)  # [K*b, C]
                self.mask.set(rows)
                rep = [v.repeat(k, *([1] * (v.dim() - 1))) for v in vals]
                pred = self.suffix(rows, *rep).argmax(1).view(k, b)
                correct += (pred == self.y[i : i + step].view(1, -1)).sum(1).cpu()
        finally:
            self.mask.set(None)
        return 100.0 * correct.double() / self.n

    def close(self) -> None:
        self.mask.remove()
        self.cache = []


def make_scorer(
    model: nn.Module,
    unit: Unit,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    fast: bool = True,
    cache_mb: float = 512.0,
    calib_x: torch.Tensor | None = None,
) -> Scorer:
    """The fast scorer when the model traces with ``torch.fx``, else the masked fallback."""
    if fast:
        try:
            return PrefixScorer(model, unit, x, y, batch_size, cache_mb, calib_x)
        except PruningError:
            raise
        except Exception as e:  # fx raises many types on dynamic control flow
            # Once per model (every unit of an untraceable model fails the same way).
            level = logging.INFO if model.__dict__.get(_FX_WARNED) else logging.WARNING
            object.__setattr__(model, _FX_WARNED, True)
            log.log(
                level,
                "torch.fx cannot trace the model (%s: %s); scoring with full forward passes",
                type(e).__name__,
                _first_line(e),
            )
    return MaskedScorer(model, unit, x, y, batch_size, calib_x)


_FX_WARNED = "_rlprune_fx_warned"


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message, shortened: a log line, not a traceback."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else "no message"
    return text if len(text) <= 200 else text[:197] + "..."
