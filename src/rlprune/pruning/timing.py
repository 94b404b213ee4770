"""Timing forward passes: one clock read around each call, models timed side by side in rounds.

Everything that reports a latency goes through :func:`time_calls`; whole models go through
:class:`RoundTimer`, which times several models in alternating rounds so that differences
between them come from the same moments of a shared machine (at batch 1 this project's VM moved
by 30-50% between minutes, docs/LATENCY.md).
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from rlprune.errors import PruningError
from rlprune.models import is_channels_last
from rlprune.pruning.clock import Clock, check_clock, clock_reader
from rlprune.pruning.latency import Runtime

__all__ = ["ROUND_MS", "LatencyStats", "RoundTimer", "measure_latency", "measure_latency_paired",
           "measure_runtime", "time_calls"]  # fmt: skip

log = logging.getLogger(__name__)
K = TypeVar("K")

# A round of one model is extended towards this many ms (at most 100 x runs calls): at batch 1
# twenty calls of a small network last a few ms, and one slow stretch then moves the median.
ROUND_MS = 50.0


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


def timed_at_least(
    fn: Callable[[], Any], runs: int, warmup: int, clock: Clock = "wall", min_ms: float = 0.0,
    sync: Callable[[], object] = _nothing,
) -> list[float]:  # fmt: skip
    """:func:`time_calls`, with more calls (at most ``100 * runs``) until the timed calls add
    up to ``min_ms``."""
    times = time_calls(fn, runs, warmup, clock, sync)
    if sum(times) < min_ms:
        more = math.ceil((min_ms - sum(times)) / max(min(times), 1e-3))
        times += time_calls(fn, min(more, 100 * runs), 0, clock, sync)
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


def on_cuda(model: nn.Module, example: torch.Tensor) -> bool:
    return example.is_cuda or any(p.is_cuda for p in model.parameters())


def _runner(
    model: nn.Module, example: torch.Tensor, batch: int, threads: int, runtime: Runtime
) -> Callable[[], Any]:
    """One forward of ``model`` at ``batch`` in ``runtime`` (input in the model's layout)."""
    layout = torch.channels_last if is_channels_last(model) else torch.contiguous_format
    x = example[:1].expand(batch, *example.shape[1:]).contiguous(memory_format=layout)
    if runtime == "torch":
        return lambda: model(x)
    if runtime == "export":
        from rlprune.quiet import quiet_third_party

        ex = example[:1].expand(2, *example.shape[1:]).contiguous()
        with quiet_third_party():
            prog = torch.export.export(
                model, (ex,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},)
            )
        mod = prog.module()
        return lambda: mod(x)
    import onnxruntime as ort

    from rlprune.pruning.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, example, Path(tmp) / "m.onnx")
        if path is None:
            raise PruningError("ONNX export failed; cannot time with onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.contiguous().numpy()}
    return lambda: sess.run(None, feed)


class RoundTimer(Generic[K]):
    """Whole-model timings in rounds: each :meth:`round` times every model in turn (``runs``
    calls after a warm-up, extended towards ``min_ms``, at most ``100 * runs`` calls), with
    ``threads`` threads, in ``runtime``, on ``clock``, the input in each model's memory layout.
    Differences between the models then come from the same moments: a slow stretch of a shared
    machine timed on one model only would bend a fit through them, or a ratio of them. Spread
    over a profile, the rounds also make the level the machine's usual one rather than one
    moment's (at batch 1 on this project's VM a full model read 1.45 ms in one 2-second window
    and 1.17 ms over the next minute, docs/LATENCY.md).

    The models are put in eval mode; on CUDA each call is synchronised.

    Raises:
        ConfigError: a clock that cannot time this (one line); PruningError: ONNX export failed.
    """

    def __init__(self, models: dict[K, nn.Module], example: torch.Tensor, batch: int,
                 threads: int, runtime: Runtime = "torch", runs: int = 20, clock: Clock = "wall",
                 min_ms: float = ROUND_MS, warmup: int | None = None) -> None:  # fmt: skip
        cuda = any(on_cuda(m, example) for m in models.values())
        check_clock(clock, threads, cuda)
        self.fns = {
            k: _runner(m.eval(), example, batch, threads, runtime) for k, m in models.items()
        }
        self.sync: Callable[[], object] = torch.cuda.synchronize if cuda else _nothing
        self.batch, self.threads, self.runs, self.clock = batch, threads, runs, clock
        self.min_ms = min_ms
        self.warmup = max(3, runs // 4) if warmup is None else warmup
        self.times: dict[K, list[list[float]]] = {k: [] for k in self.fns}  # per round, per call
        self.rounds = 0

    @torch.inference_mode()
    def round(self) -> None:
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for k, fn in self.fns.items():
                self.times[k].append(timed_at_least(
                    fn, self.runs, self.warmup, self.clock, self.min_ms, self.sync))  # fmt: skip
        finally:
            torch.set_num_threads(old)
        self.rounds += 1

    def medians(self) -> dict[K, float]:
        """Per model, the median over rounds of each round's median call (ms)."""
        return {
            k: statistics.median(statistics.median(r) for r in rs) for k, rs in self.times.items()
        }

    def stats(self) -> dict[K, LatencyStats]:
        """Per model, median and inter-quartile range over the calls of all rounds."""
        return {k: _stats(self.batch, [t for r in rs for t in r], self.threads, self.clock)
                for k, rs in self.times.items()}  # fmt: skip


def _stats(batch: int, times: list[float], threads: int, clock: Clock) -> LatencyStats:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
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
    """Median and inter-quartile range of ``runs`` forward times at ``batch`` on ``clock``.

    The thread count is fixed for the measurement (and restored afterwards) so that numbers
    compare across models; warm-up runs let the allocator and oneDNN settle. The model's
    train/eval mode is restored.

    Raises:
        ConfigError: ``clock="cpu"`` with other than 1 thread, or on CUDA (one line).
    """
    was_training = model.training
    try:
        timer = RoundTimer({0: model}, example_input, batch, threads or torch.get_num_threads(),
                           "torch", runs, clock, min_ms=0.0, warmup=warmup)  # fmt: skip
        timer.round()
        return timer.stats()[0]
    finally:
        model.train(was_training)


def measure_latency_paired(
    models: Sequence[nn.Module],
    example_input: torch.Tensor,
    batches: Sequence[int] = (1, 64),
    runs: int = 30,
    rounds: int = 3,
    threads: int | None = None,
) -> list[dict[int, LatencyStats]]:
    """:func:`measure_latency` of several models (timed in eval mode, their modes restored),
    side by side on the wall clock: ``rounds`` rounds, each timing every model at every batch in turn (a
    :class:`RoundTimer` per batch); each model's statistics are over its calls of all rounds.
    Two models timed minutes apart differ by the machine's drift as well as by themselves.

    Returns:
        Per model, batch size -> statistics (``runs * rounds`` calls).
    """
    n = threads or torch.get_num_threads()
    keyed = dict(enumerate(models))
    modes = [m.training for m in models]
    try:
        # exactly ``runs`` calls a round: pooled, every round then weighs the same
        timers = {b: RoundTimer(keyed, example_input, b, n, "torch", runs, "wall", min_ms=0.0)
                  for b in batches}  # fmt: skip
        for _ in range(rounds):
            for timer in timers.values():
                timer.round()
    finally:
        for m, training in zip(models, modes, strict=True):
            m.train(training)
    stats = {b: t.stats() for b, t in timers.items()}
    return [{b: stats[b][i] for b in batches} for i in keyed]


def measure_runtime(model: nn.Module, example: torch.Tensor, batch: int, threads: int,
                    runtime: Runtime = "torch", runs: int = 20, clock: Clock = "wall") -> float:  # fmt: skip
    """Median ms of a whole forward at ``batch`` with ``threads`` threads in ``runtime``, on
    ``clock`` (compare a table's predictions with measurements on the table's clock).

    Raises:
        ConfigError: ``clock="cpu"`` with other than 1 thread, or on CUDA (one line).
    """
    timer = RoundTimer({0: model}, example, batch, threads, runtime, runs, clock, min_ms=0.0)
    timer.round()
    return timer.medians()[0]
