"""Batch 1: does probing every output width (``step=1``) price the searched models better than
the block grid (``step=8``: multiples of 8 and one either side)? (docs/LATENCY.md)

Two batch-1 tables of one model (checkpoint in docs/results/base/, NHWC, 1 thread, CPU clock,
layers timed alone) are profiled in this process, one per step, one after the other; then the
baseline and the searched models (as ``bench/latency_clock.py --searched`` finds them) are timed
in interleaved rounds, and both tables' predictions are set against the same medians.

    OMP_NUM_THREADS=1 .venv/bin/python bench/step_compare.py --model resnet20 --steady-malloc
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from benchargs import base_model, parse, parser  # bench/, beside this script
from latency_clock import _searched
from rlprune.machine import cpu_summary, malloc_mode
from rlprune.pruning.profile import profile_latency
from rlprune.pruning.timing import measure_runtime

ROOT = Path(__file__).resolve().parents[1]
STEPS = (8, 1)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--json", default=None, help="also write the results here")
    args = parse(p)
    torch.set_num_threads(1)
    base, example = base_model(args.model)
    luts, secs = {}, {}
    for step in STEPS:
        t0 = time.perf_counter()
        luts[step] = profile_latency(base, example, (1,), threads=1, step=step, clock="cpu")
        secs[step] = time.perf_counter() - t0
    nets = _searched(args.model, base, Path(args.runs_dir))
    times: dict[str, list[float]] = {n: [] for n in nets}
    for _ in range(args.rounds):
        for name, (net, _) in nets.items():
            times[name].append(measure_runtime(net, example, 1, 1, "torch", 100, "cpu"))
    rows = []
    for name, (_, counts) in nets.items():
        meas = statistics.median(times[name])
        pred = {s: luts[s].model(1)(counts) for s in STEPS}
        rows.append({"structure": name, "rounds_ms": times[name], "measured_ms": meas,
                     **{f"predicted_step{s}_ms": pred[s] for s in STEPS}})  # fmt: skip
    print(f"{args.model}, {cpu_summary()}, 1 thread, {malloc_mode()} malloc, batch 1, "
          f"{args.rounds} rounds x 100 passes; profiles "
          + ", ".join(f"step {s} {secs[s]:.0f} s" for s in STEPS))  # fmt: skip
    print("| structure | measured ms (spread) | " + " | ".join(f"step {s}" for s in STEPS) + " |")
    print("|---|---:|" + "---:|" * len(STEPS))
    for r in rows:
        ts, m = r["rounds_ms"], r["measured_ms"]
        errs = " | ".join(f"{r[f'predicted_step{s}_ms'] / m - 1:+.1%}" for s in STEPS)
        print(f"| {r['structure']} | {m:.3f} ({(max(ts) - min(ts)) / m:.0%}) | {errs} |")
    for s in STEPS:
        n = sum(abs(r[f"predicted_step{s}_ms"] / r["measured_ms"] - 1) <= 0.10 for r in rows[1:])
        print(f"step {s}: {n}/{len(rows) - 1} searched models within 10%")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "cpu": cpu_summary(), "malloc": malloc_mode(),
            "rounds": args.rounds, "profile_s": secs, "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
