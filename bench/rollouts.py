"""Rollout throughput: naive path vs fast path (prefix cache) per unit, and a whole search.

Usage (also run by ``make bench``)::

    .venv/bin/python bench/rollouts.py [--reward-set 1000] [--checkpoint runs/demo/base/model.pt]

Per unit of vgg-small and resnet20 on Fashion-MNIST validation images it prints rollouts/s of

* naive   — deepcopy + physical cut (torch-pruning) + full forward, per mask,
* fast    — prefix cache + suffix-only forward with the live model masked,
* batched — fast, with the K masks of an update scored in one pass,

and the median fast/naive ratio. With a trained checkpoint it then times a whole search with the
demo settings (accuracy-bounded, 1 pp).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlprune.checkpoint import load_model
from rlprune.config import PruneConfig
from rlprune.data import load_dataset
from rlprune.models import build_model
from rlprune.pruning import find_units
from rlprune.rollouts import NaiveScorer, PrefixScorer
from rlprune.search import prune


def _rate(fn, reps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return reps / (time.perf_counter() - t)


def bench_model(
    name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, calib: torch.Tensor, k: int
) -> list[float]:
    model.eval()
    g = torch.Generator().manual_seed(0)
    print(
        f"\n### {name} — reward set {len(y)} images, adaptive BN on {len(calib)} calibration "
        f"images (the default), batch 250; batched = K = {k} masks per pass, adaptive BN off\n"
    )
    print(
        "| unit | ch | naive r/s | fast r/s | batched r/s | fast/naive | batched/naive (no BN adapt) | cache MiB | cache build s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for unit in find_units(model, x[:1]):
        masks = (torch.rand(k, unit.channels, generator=g) > 0.3).float()
        naive = NaiveScorer(model, unit, x, y, 250, calib_x=calib)
        t = time.perf_counter()
        fast = PrefixScorer(model, unit, x, y, 250, calib_x=calib)
        build = time.perf_counter() - t
        r_naive = _rate(lambda n=naive, m=masks: n.accuracy(m[0]), 2)
        r_fast = _rate(lambda f=fast, m=masks: f.accuracy(m[1]), 4)
        plain_naive = NaiveScorer(model, unit, x, y, 250)
        plain = PrefixScorer(model, unit, x, y, 250)
        r_plain_naive = _rate(lambda n=plain_naive, m=masks: n.accuracy(m[0]), 2)
        r_batch = k * _rate(lambda f=plain, m=masks: f.accuracies(m), 1)
        plain.close()
        ratios.append(r_fast / r_naive)
        print(
            f"| {unit.name} | {unit.channels} | {r_naive:.2f} | {r_fast:.2f} | {r_batch:.2f} | "
            f"{r_fast / r_naive:.1f}x | {r_batch / r_plain_naive:.1f}x | {fast.cache_mb:.1f} | {build:.2f} |"
        )
        fast.close()
    print(f"\nmedian fast/naive over units: **{statistics.median(ratios):.1f}x**")
    return ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reward-set", type=int, default=1000)
    p.add_argument("--k", type=int, default=12, help="masks per update for the batched column")
    p.add_argument("--checkpoint", default="runs/demo/base/model.pt")
    p.add_argument("--no-search", action="store_true", help="skip the whole-search timing")
    args = p.parse_args()
    torch.manual_seed(0)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    data = load_dataset("fashion-mnist")
    val = data.val.subset(args.reward_set, seed=0)
    x, y = val.images, val.labels
    calib = data.train.subset(256, seed=1).images
    ckpt = Path(args.checkpoint)
    vgg = load_model(ckpt)[0] if ckpt.is_file() else build_model("vgg-small", 1, 10, 28)
    bench_model("vgg-small", vgg, x, y, calib, args.k)
    bench_model("resnet20", build_model("resnet20", 1, 10, 28), x, y, calib, args.k)
    if args.no_search or not ckpt.is_file():
        print("\n(whole-search timing skipped: no trained checkpoint; run `make demo` first)")
        return
    model, spec, _ = load_model(ckpt)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        res = prune(
            model,
            data.train,
            data.val,
            PruneConfig(),
            test=data.test,
            out_dir=out,
            spec=spec,
            hflip=data.hflip,
        )
        wall = time.perf_counter() - t
    print(
        f"\nwhole search, demo settings (vgg-small, --max-acc-drop 1): {wall:.0f} s wall; "
        f"MACs {res.baseline['macs'] / res.pruned['macs']:.2f}x smaller, test acc "
        f"{res.baseline['test_acc']:.2f}% -> {res.pruned['test_acc']:.2f}%"
    )


if __name__ == "__main__":
    main()
