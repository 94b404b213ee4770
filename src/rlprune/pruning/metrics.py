"""Exact measurement: MACs and params (torch-pruning's counter), latency, file size."""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch_pruning as tp
from torch import nn

from rlprune.errors import PruningError
from rlprune.pruning.clock import Clock, check_clock, clock_reader
from rlprune.pruning.surgery import remove_channels
from rlprune.pruning.units import Unit

_T = TypeVar("_T")

__all__ = [
    "LatencyStats",
    "MacModel",
    "UnitMacs",
    "count_macs_params",
    "file_size",
    "measure_latency",
    "measure_latency_paired",
    "time_calls",
]

log = logging.getLogger(__name__)


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


def _nothing() -> None:
    return None


def time_calls(
    fn: Callable[[], object],
    runs: int,
    warmup: int,
    clock: Clock = "wall",
    sync: Callable[[], object] = _nothing,
) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``fn()`` on ``clock``, after ``warmup`` calls.

    ``sync`` is called before and after each timed call (CUDA: ``torch.cuda.synchronize``).
    With the CPU clock, work done by another thread of the process would go uncounted: if the
    process spent clearly more CPU time than the calling thread, a warning says so.
    """
    for _ in range(warmup):
        fn()
    now = clock_reader(clock)
    times = []
    # the loop's own thread time, not the sum of the timed calls: around calls of a few
    # microseconds the bookkeeping alone is a fifth of the thread's work
    start, start_thread = time.process_time(), time.thread_time()
    for _ in range(runs):
        sync()
        t = now()
        fn()
        sync()
        times.append((now() - t) * 1e3)
    process_ms = (time.process_time() - start) * 1e3
    thread_ms = (time.thread_time() - start_thread) * 1e3
    if clock == "cpu" and process_ms > 1.0 and thread_ms < 0.8 * process_ms:
        log.warning(
            "clock=cpu: the calling thread did %.0f%% of the process's CPU work; the rest ran "
            "in other threads and is not counted",
            100 * thread_ms / process_ms,
        )
    return times


@dataclass(frozen=True)
class LatencyStats:
    """Latency summary in milliseconds over ``runs`` timed forward passes on ``clock``."""

    batch: int
    median_ms: float
    iqr_ms: float
    runs: int
    threads: int
    clock: Clock = "wall"

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


@torch.inference_mode()
def _forward_times(model: nn.Module, example_input: torch.Tensor, batch: int, runs: int,
                   warmup: int, threads: int | None, clock: Clock) -> tuple[list[float], int]:  # fmt: skip
    """Milliseconds of ``runs`` forwards at ``batch`` (threads fixed, then restored), and the
    thread count used."""
    old = torch.get_num_threads()
    n = threads or old
    x = example_input[:1].expand(batch, *example_input.shape[1:]).contiguous()
    check_clock(clock, n, x.is_cuda)
    torch.set_num_threads(n)
    try:
        was_training = model.training
        model.eval()
        # CUDA kernels run asynchronously: synchronise around each timed pass.
        sync = torch.cuda.synchronize if x.is_cuda else _nothing
        times = time_calls(lambda: model(x), runs, warmup, clock, sync)
        model.train(was_training)
    finally:
        torch.set_num_threads(old)
    return times, n


def _stats(batch: int, times: list[float], threads: int, clock: Clock) -> LatencyStats:
    q = statistics.quantiles(times, n=4)
    return LatencyStats(batch, statistics.median(times), q[2] - q[0], len(times), threads, clock)


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    batch: int = 1,
    runs: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    clock: Clock = "wall",
) -> LatencyStats:
    """Median and inter-quartile range of the forward time at ``batch`` on ``clock``.

    The thread count is fixed for the measurement (and restored afterwards) so that numbers
    compare across models; warm-up runs let the allocator and oneDNN settle.

    Raises:
        ConfigError: ``clock="cpu"`` with other than 1 thread, or on CUDA (one line).
    """
    times, n = _forward_times(model, example_input, batch, runs, warmup, threads, clock)
    return _stats(batch, times, n, clock)


def measure_latency_paired(
    models: Sequence[nn.Module],
    example_input: torch.Tensor,
    batches: Sequence[int] = (1, 64),
    runs: int = 30,
    rounds: int = 3,
    threads: int | None = None,
) -> list[dict[int, LatencyStats]]:
    """:func:`measure_latency` of several models, timed side by side: ``rounds`` rounds, each
    timing every model at every batch in turn (``runs`` passes after 2 warm-up ones); each
    model's statistics are over its passes of all rounds. Two models timed minutes apart
    differ by the machine's drift as well as by themselves: a shared CPU's batch-1 speed moved
    by 40% between minutes (docs/LATENCY.md).

    Returns:
        Per model, batch size -> statistics (``runs * rounds`` passes).
    """
    pooled: list[dict[int, list[float]]] = [{b: [] for b in batches} for _ in models]
    n = threads or torch.get_num_threads()
    for _ in range(rounds):
        for b in batches:
            for model, times in zip(models, pooled, strict=True):
                times[b] += _forward_times(model, example_input, b, runs, 2, n, "wall")[0]
    return [{b: _stats(b, ts, n, "wall") for b, ts in times.items()} for times in pooled]


def file_size(path: str | Path) -> int:
    """Size of a file in bytes."""
    return Path(path).stat().st_size
