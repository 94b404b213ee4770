"""What a latency is measured on: the wall clock, or the timing thread's CPU time.

Clocks (:data:`Clock`): ``wall`` is elapsed time (``time.perf_counter``), what a user waits for;
``cpu`` is the CPU time of the calling thread (``time.thread_time``). On a shared machine the
CPU clock leaves out the time the scheduler or the hypervisor gives the core to someone else;
it still includes cache and memory-bandwidth contention and the core's own speed, so it need
not swing less (on this project's VM it did not: docs/LATENCY.md). It counts only work done in
the calling thread, so it is refused unless the measurement runs on one thread on the CPU
(:func:`check_clock`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from rlprune.errors import ConfigError

__all__ = ["CLOCKS", "Clock", "check_clock", "clock_reader"]

Clock = Literal["wall", "cpu"]
CLOCKS: tuple[Clock, ...] = ("wall", "cpu")


def check_clock(clock: str, threads: int, cuda: bool = False) -> None:
    """Raise :class:`ConfigError` (one line) unless ``clock`` can time this measurement.

    The CPU clock counts the calling thread only: with more threads the workers' share is
    missed, and a CUDA kernel runs on the GPU while the thread waits. One thread means one
    torch thread, or ONNX Runtime with ``intra_op_num_threads=1``, which runs its kernels in the
    calling thread (checked on ORT 1.32: it starts no worker thread, and the thread's CPU time
    equals the process's).
    """
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCKS)}, got {str(clock)[:20]!r}")
    if clock == "cpu" and cuda:
        raise ConfigError("clock=cpu times the CPU thread, not CUDA kernels: use clock=wall")
    if clock == "cpu" and threads != 1:
        raise ConfigError(
            f"clock=cpu counts the calling thread only: use 1 thread, not {threads} (or clock=wall)"
        )


def clock_reader(clock: Clock) -> Callable[[], float]:
    """Seconds on ``clock``: ``time.perf_counter`` (wall) or ``time.thread_time`` (cpu)."""
    return time.perf_counter if clock == "wall" else time.thread_time
