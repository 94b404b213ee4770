"""Which machine a number was measured on: CPUs differ 3x in speed between machines here, and a
cell fine-tuned on a GPU (bf16 autocast) is not one fine-tuned on a CPU (fp32)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
from pathlib import Path
from typing import Literal

import torch

__all__ = [
    "CPU_FLAGS",
    "MallocMode",
    "cpu_summary",
    "device_summary",
    "malloc_mode",
    "steady_malloc",
]

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # what sets CPU kernel speed


def cpu_summary(flags: tuple[str, ...] = CPU_FLAGS) -> str:
    """The CPU's model name (``lscpu``'s, from /proc/cpuinfo) and which of ``flags`` (vector
    extensions) it has, e.g. ``AMD EPYC (avx2 avx512f avx512_bf16)``."""
    model, have = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                have = set(value.split())
                break
    return f"{model} ({' '.join(f for f in flags if f in have) or 'no AVX2'})"


def device_summary(device: torch.device | str) -> str:
    """Where a run's tensors live: ``cpu``, or an accelerator's type and name, e.g.
    ``cuda: NVIDIA H200``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return dev.type


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_MAX_THRESHOLD = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
MallocMode = Literal["system", "steady"]
_steady = False


def steady_malloc() -> bool:
    """Keep glibc's malloc from mapping large blocks freshly from the kernel on every call.

    By default glibc serves blocks above its (self-adjusting) mmap threshold with ``mmap`` and
    returns them on ``free``, so a network whose activations are a few MB takes page faults
    (zeroed pages) for every layer output in every forward, and the threshold's adjustments
    change that from one minute to the next. Measured on resnet20 at batch 64, 1 thread
    (docs/LATENCY.md, ``bench/malloc_whole.py``): 83 ms by default against 57 ms with large
    blocks kept on the heap (medians; vgg-small gained nothing). This is what
    ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`` does for a deployed
    process. Returns whether it took effect (glibc only); the process
    then keeps up to 1 GiB of freed memory instead of returning it.
    """
    global _steady
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    done = [  # every call made, even after a refusal: no half-set state goes unrecorded
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_MAX_THRESHOLD),
            (_M_TRIM_THRESHOLD, 1 << 30),
            (_M_TOP_PAD, 64 << 20),
        )
    ]
    ok = all(done)
    _steady = _steady or done[0]  # the mmap threshold is what keeps blocks on the heap
    return ok


def malloc_mode() -> MallocMode:
    """``steady`` after :func:`steady_malloc` took effect, or with glibc's
    ``MALLOC_MMAP_THRESHOLD_`` set to 32 MiB in the environment; else ``system``: what latency
    measurements in this process ran under."""
    env = os.environ.get("MALLOC_MMAP_THRESHOLD_", "")
    return "steady" if _steady or (env.isdigit() and int(env) >= _MMAP_MAX_THRESHOLD) else "system"
