"""Search wall time on 1 vs 2 processes (torchrun, gloo) on this machine, in one run.

Usage (also run by ``make bench``)::

    .venv/bin/python bench/distributed.py [--checkpoint runs/demo/base/model.pt]

Both runs use the same seed and settings and the same total number of threads (1 process x 2
threads vs 2 processes x 1 thread). It also prints what crosses the wire per policy update
and per fine-tuning step, which is what decides how the search scales to N GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from rlprune.distributed import launch_argv

SETTINGS = [
    "--set",
    "agent.updates=4",
    "--set",
    "agent.samples=8",
    "--set",
    "finetune_steps=20",
    "--set",
    "final_finetune_epochs=0.1",
    "--set",
    "latency_runs=5",
]


def run(ckpt: str, dataset: str, nproc: int, out: Path) -> float:
    prune = [
        "-m",
        "rlprune",
        "prune",
        "--checkpoint",
        ckpt,
        "--dataset",
        dataset,
        "--out",
        str(out),
        "--max-acc-drop",
        "1",
        "--quiet",
        *SETTINGS,
    ]
    threads = max(1, (os.cpu_count() or 2) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = launch_argv(nproc, prune)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="runs/demo/base/model.pt")
    p.add_argument("--dataset", default="fashion-mnist")
    args = p.parse_args()
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"no checkpoint at {args.checkpoint}: run `make demo` first")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        walls = {n: run(args.checkpoint, args.dataset, n, Path(tmp) / f"p{n}") for n in (1, 2)}
        reps = {n: json.loads((Path(tmp) / f"p{n}" / "report.json").read_text()) for n in (1, 2)}
    k = 8
    params = reps[1]["baseline"]["params"]
    print("\n| processes | threads each | search wall s | speed-up | pruned MACs | test acc |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (1, 2):
        r = reps[n]["pruned"]
        print(
            f"| {n} | {max(1, (os.cpu_count() or 2) // n)} | {walls[n]:.0f} | "
            f"{walls[1] / walls[n]:.2f}x | {r['macs'] / 1e6:.2f}M | {r['test_acc']:.2f}% |"
        )
    print(f"\nper policy update: one all-reduce of K={k} float64 accuracies = {8 * k} bytes;")
    print(
        f"per DDP fine-tune step: one all-reduce of the gradients = 4 B x {params / 1e3:.0f}k "
        f"params (unpruned) = {4 * params / 1e6:.2f} MB, shrinking as units are cut;"
    )
    print("per unit: one broadcast of the fine-tuned state dict (params + BN buffers).")


if __name__ == "__main__":
    main()
