"""Whole-model batch-64 CPU time under glibc's default malloc and with large blocks kept on the
heap (docs/LATENCY.md, "The allocator"). One process per mode, since the setting is
process-wide; 3 repeats of the full model and of every unit cut to half, 1 thread, NHWC, the
median of 10 passes on the CPU clock each.

    OMP_NUM_THREADS=1 .venv/bin/python bench/malloc_whole.py system
    OMP_NUM_THREADS=1 .venv/bin/python bench/malloc_whole.py mallopt     # rlprune.machine.steady_malloc
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        OMP_NUM_THREADS=1 .venv/bin/python bench/malloc_whole.py env     # the same, set at start
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rlprune.checkpoint import load_model
from rlprune.machine import cpu_summary, malloc_mode, steady_malloc
from rlprune.models import set_layout
from rlprune.pruning.profile import uniform_cut

BASE = Path(__file__).resolve().parents[1] / "docs" / "results" / "base"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["system", "mallopt", "env"])
    p.add_argument("--model", default="resnet20", choices=["resnet20", "vgg-small"])
    args = p.parse_args()
    if args.mode == "mallopt" and not steady_malloc():
        raise SystemExit("no glibc mallopt here")
    torch.set_num_threads(1)
    base, spec, _ = load_model(BASE / f"{args.model}.pt")
    assert spec is not None
    ex = spec.example_input()
    set_layout(base, True).eval()
    x = ex[:1].expand(64, *ex.shape[1:]).contiguous(memory_format=torch.channels_last)
    half = set_layout(uniform_cut(base, ex, 0.5), True).eval()
    res = []
    for _ in range(3):
        for label, net in (("full", base), ("half", half)):
            with torch.inference_mode():
                for _ in range(3):
                    net(x)
                ts = []
                for _ in range(10):
                    t = time.thread_time()
                    net(x)
                    ts.append(time.thread_time() - t)
            res.append(f"{label} {1e3 * statistics.median(ts):.1f}")
    print(f"{args.model}, {cpu_summary()}, {malloc_mode()} malloc ({args.mode}), b64 ms:",
          ", ".join(res))  # fmt: skip


if __name__ == "__main__":
    main()
