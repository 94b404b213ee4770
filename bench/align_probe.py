"""Batch 1: does the latency table see channel alignment? (docs/LATENCY.md)

One model (checkpoint in docs/results/base/, NHWC, 1 thread, CPU clock): a table is profiled
(output widths probed at multiples of 8 and one above, input widths at aligned fractions), then
these structures are cut with L1 filters and timed at batch 1 in interleaved rounds, beside the
table's prediction:

- the walk cell's seed-0 MACs-aware counts (docs/results/latency/), raw and rounded to 8 and 16
  (``round_count``, the rule of ``round_to``);
- every unit at 0.75 of its width (multiples of 8), and the same minus 1, 3 and 5 channels.

    OMP_NUM_THREADS=1 .venv/bin/python bench/align_probe.py --model vgg-small --steady-malloc
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import torch

from benchargs import base_model, parse, parser  # bench/, beside this script
from rlprune.baselines import prune_to_target
from rlprune.machine import cpu_summary, malloc_mode
from rlprune.models import set_layout
from rlprune.pruning.latency import uniform_counts
from rlprune.pruning.profile import profile_latency
from rlprune.pruning.timing import measure_runtime
from rlprune.pruning.units import round_count

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=5)
    args = parse(p)
    torch.set_num_threads(1)
    base, example = base_model(args.model)
    lut = profile_latency(base, example, (1, 64), threads=1, runs=10, clock="cpu")
    full = dict(lut.units)
    cell = json.loads((ROOT / "docs/results/latency" / f"{args.model}_s0.json").read_text())
    raw = {u: int(k) for u, k in cell["macs_aware"]["kept"].items()}
    structs = {"raw": raw}
    for m in (8, 16):
        structs[f"round{m}"] = {u: round_count(k, full[u], m) for u, k in raw.items()}
    aligned = uniform_counts(full, 0.75)
    for d in (0, 1, 3, 5):
        structs[f"0.75 - {d}"] = {u: k - d for u, k in aligned.items()}
    nets = {}
    for name, counts in structs.items():
        net = copy.deepcopy(base)
        prune_to_target(net, "l1-rl-ratios", 1.0, example, counts=counts)
        nets[name] = set_layout(net, True).eval()
    times: dict[str, list[float]] = {n: [] for n in nets}
    for _ in range(args.rounds):
        for name, net in nets.items():
            times[name].append(measure_runtime(net, example, 1, 1, "torch", 100, "cpu"))
    print(f"{args.model}, {cpu_summary()}, 1 thread, {malloc_mode()} malloc, batch 1, "
          f"{args.rounds} rounds x 100 passes")  # fmt: skip
    print("| structure | widths (smallest) | predicted ms | measured ms (spread) | error |")
    print("|---|---|---:|---:|---:|")
    for name, ts in times.items():
        meas, pred = statistics.median(ts), lut.model(1)(structs[name])
        widths = ", ".join(str(w) for w in sorted(set(structs[name].values()))[:3])
        print(f"| {name} | {widths} | {pred:.3f} | {meas:.3f} ({(max(ts) - min(ts)) / meas:.0%}) "
              f"| {pred / meas - 1:+.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
