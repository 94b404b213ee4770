"""What does one conv cost at each output width? (docs/LATENCY.md)

One 3x3 conv alone, NHWC, batch 1 (or ``--batch``), 1 thread, CPU clock: for each (input width,
resolution) of resnet20's three stages on Fashion-MNIST, every output width in a range across
block edges, timed as the median of 3 medians of 200 calls (at batch 1; fewer above it, about
as long in all). Prints microseconds by output width.

    OMP_NUM_THREADS=1 .venv/bin/python bench/remainder_sweep.py --steady-malloc [--batch 64]
"""

from __future__ import annotations

import statistics

import torch

from benchargs import parse, parser  # bench/, beside this script
from rlprune.machine import cpu_summary, malloc_mode
from rlprune.pruning.timing import time_calls

STAGES = ((16, 28, range(6, 18)), (32, 14, range(14, 34)), (64, 7, range(40, 66)))


def conv_us(cin: int, cout: int, hw: int, batch: int = 1) -> float:
    """Median µs of a 3x3 ``cin -> cout`` conv on a ``[batch, cin, hw, hw]`` NHWC input."""
    conv = torch.nn.Conv2d(cin, cout, 3, 1, 1, bias=False).eval()
    conv = conv.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(batch, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    n, warmup = max(5, 200 // batch), max(2, 20 // batch)
    with torch.inference_mode():
        rounds = [
            statistics.median(time_calls(lambda: conv(x), n, warmup, "cpu")) for _ in range(3)
        ]
    return 1000 * statistics.median(rounds)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=1)
    args = parse(p)
    torch.set_num_threads(1)
    print(f"{cpu_summary()}, 1 thread, {malloc_mode()} malloc, batch {args.batch}, CPU clock, µs")
    for cin, hw, widths in STAGES:
        row = " ".join(f"{w}:{conv_us(cin, w, hw, args.batch):.0f}" for w in widths)
        print(f"in {cin} at {hw}x{hw}: {row}", flush=True)


if __name__ == "__main__":
    main()
