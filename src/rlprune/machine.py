"""Which machine a number was measured on: CPUs differ 3x in speed between machines here, and a
cell fine-tuned on a GPU (bf16 autocast) is not one fine-tuned on a CPU (fp32)."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

__all__ = ["CPU_FLAGS", "cpu_summary", "device_summary"]

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
