"""Which machine a number was measured on: CPUs differ 3x in speed between machines here."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

__all__ = ["CPU_FLAGS", "cpu_summary"]

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
