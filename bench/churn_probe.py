"""Is a whole model slower right after the layer grid's probes? (docs/LATENCY.md)

The profile times its calibration rounds between stretches of single-layer probes (at batch 1,
every output width: thousands of conv shapes). If those probes leave the model's kernels cold
(oneDNN's primitive cache, the allocator, the caches), the calibration reads the model slower
than a user's later measurement does, and every prediction misses the same way. This times the
full model at batch 1 (1 thread, CPU clock, NHWC), alternating: right after a stretch of probes
of distinct conv shapes, and after the same time idle-free (no probes), ``--reps`` times each;
prints the medians and each call's time after the probes (the first calls show the recovery).

    OMP_NUM_THREADS=1 .venv/bin/python bench/churn_probe.py --model resnet20 --steady-malloc
"""

from __future__ import annotations

import statistics

import torch

from benchargs import base_model, parse, parser  # bench/, beside this script
from rlprune.machine import cpu_summary, malloc_mode
from rlprune.pruning.timing import time_calls


def churn(shapes: int, hw: int, seed: int) -> None:
    """``shapes`` 3x3 convs of distinct output widths, each called 12 times, as a grid does."""
    g = torch.Generator().manual_seed(seed)
    for i in range(shapes):
        cin, cout = 16 + 16 * (i % 3), 1 + (i * 7 + seed) % 64
        conv = torch.nn.Conv2d(cin, cout, 3, 1, 1, bias=False).eval()
        conv = conv.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = torch.randn(1, cin, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
        for _ in range(12):
            conv(x)


def main() -> None:
    p = parser(__doc__, "resnet20")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--shapes", type=int, default=150, help="probe shapes per churn stretch")
    args = parse(p)
    torch.set_num_threads(1)
    model, example = base_model(args.model)
    x = example.contiguous(memory_format=torch.channels_last)
    after, plain, first = [], [], []
    with torch.inference_mode():
        for r in range(args.reps):
            churn(args.shapes, 28 >> (r % 3), r)
            ts = time_calls(lambda: model(x), 40, 0, "cpu")
            first.append(ts[:8])
            after.append(statistics.median(ts[3:]))  # the calibration's 3 warm-up calls
            time_calls(lambda: model(x), 20, 0, "cpu")
            plain.append(statistics.median(time_calls(lambda: model(x), 37, 3, "cpu")))
    print(f"{args.model}, {cpu_summary()}, {malloc_mode()} malloc, batch 1, 1 thread, CPU clock")
    print(f"after probes (3 warm-up): median {statistics.median(after):.3f} ms, rounds "
          + " ".join(f"{a:.3f}" for a in after))  # fmt: skip
    print(f"without probes:           median {statistics.median(plain):.3f} ms, rounds "
          + " ".join(f"{a:.3f}" for a in plain))  # fmt: skip
    print("first 8 calls after probes (median over reps, ms): "
          + " ".join(f"{statistics.median(c):.3f}" for c in zip(*first, strict=True)))  # fmt: skip


if __name__ == "__main__":
    main()
