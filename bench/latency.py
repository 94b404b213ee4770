"""Does removing channels make the model faster? MACs and measured CPU latency, before/after.

For vgg-small and resnet20 (1x28x28 input, 10 classes, random init, eval mode) the script cuts
the smallest-L1 half of the channels of every prunable unit (re-finding the units after each cut,
so every cut sees the model as it is), then measures MACs and forward latency (median and IQR
over ``--runs`` timed passes, batch 1 and batch 64, a fixed thread count) of the model before and
after, all in one run, and prints a markdown table.

    .venv/bin/python bench/latency.py [--runs 30] [--models vgg-small,resnet20]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from torch import nn

from rlprune.models import build_model, set_layout
from rlprune.pruning import (
    count_macs_params,
    filter_l1,
    find_units,
    measure_latency,
    remove_channels,
)

BATCHES = (1, 64)


def halve_every_unit(model: nn.Module, example: torch.Tensor) -> None:
    """Remove the smallest-L1 half (floor) of the channels of every unit, in place."""
    names = [u.name for u in find_units(model, example)]
    for name in names:
        unit = next(u for u in find_units(model, example) if u.name == name)
        keep = unit.channels - unit.channels // 2
        mask = torch.zeros(unit.channels)
        mask[torch.topk(filter_l1(model, unit), keep).indices] = 1
        remove_channels(model, unit, mask, example)


def measure(model: nn.Module, example: torch.Tensor, runs: int, threads: int) -> dict[str, float]:
    macs, params = count_macs_params(model, example)
    out: dict[str, float] = {"macs": macs, "params": params}
    for b in BATCHES:
        s = measure_latency(model, example, batch=b, runs=runs, threads=threads)
        out[f"b{b}_median"], out[f"b{b}_iqr"] = s.median_ms, s.iqr_ms
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30, help="timed forward passes per measurement")
    p.add_argument("--models", default="vgg-small,resnet20", help="comma-separated zoo names")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    threads = torch.get_num_threads()
    example = torch.zeros(1, 1, 28, 28)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {threads} threads, runs {args.runs}, "
        f"load average at start {load:.2f}"
    )
    if load > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine is busy; latencies (and IQRs) will be noisy")
    print()
    rows = []
    t0 = time.perf_counter()
    for name in args.models.split(","):
        for layout in ("NCHW", "NHWC"):
            torch.manual_seed(args.seed)
            model = set_layout(build_model(name, 1, 10, 28).eval(), layout == "NHWC")
            before = measure(model, example, args.runs, threads)
            halve_every_unit(model, example)
            model.eval()  # remove_channels keeps the layout
            after = measure(model, example, args.runs, threads)
            rows.append((name, layout, before, after))

    print(
        "| model | layout | MACs before | MACs after | MAC ratio | params before | params after "
        "| batch | latency before (ms, median ± IQR) | latency after (ms, median ± IQR) "
        "| latency ratio |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, layout, before, after in rows:
        for b in BATCHES:
            med0, iqr0 = before[f"b{b}_median"], before[f"b{b}_iqr"]
            med1, iqr1 = after[f"b{b}_median"], after[f"b{b}_iqr"]
            print(
                f"| {name} | {layout} | {before['macs'] / 1e6:.2f}M | {after['macs'] / 1e6:.2f}M "
                f"| {after['macs'] / before['macs']:.3f} "
                f"| {before['params'] / 1e3:.1f}k | {after['params'] / 1e3:.1f}k | {b} "
                f"| {med0:.3f} ± {iqr0:.3f} | {med1:.3f} ± {iqr1:.3f} | {med1 / med0:.3f} |"
            )
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
