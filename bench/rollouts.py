"""Rollout throughput: naive path vs fast path per unit, and whole searches.

Rollouts are the search's hot loop, so their speed sets the wall time of a search.

Usage (also run by ``make bench``)::

    .venv/bin/python bench/rollouts.py [--reward-set 1000] [--checkpoint runs/demo/base/model.pt]

Per unit of vgg-small and resnet20 on Fashion-MNIST validation images it prints rollouts/s of

* naive      - deepcopy + physical cut (torch-pruning) + full forward per mask, on the model as
               users hand it over (NCHW): the path the fast one replaced,
* naive NHWC - the same on an NHWC copy (how much of the gain is memory layout alone),
* fast       - what ``rlprune prune`` does: NHWC model, prefix cache, suffix-only forward with
               the live model masked,
* fast bf16  - the fast path with ``rollout.precision=bf16`` (bf16 autocast; NOT exact), and
               the largest accuracy difference from fp32 over 6 masks,
* batched    - fast, with the K masks of an update scored in one pass; adaptive BN off, so it
               is compared with the fast path with adaptive BN off, one mask at a time,

all with adaptive BN (the default) unless said otherwise, the median fast/naive ratio, and
``MAC bound``: MACs per naive rollout / MACs per fast rollout. No exact method can beat that
bound without also beating the arithmetic throughput of the kernels.

With a trained checkpoint it then times whole searches with the demo settings (accuracy-bounded,
1 pp): NHWC (the default), NCHW, and NHWC with bf16 rollouts.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch_pruning as tp

from rlprune.checkpoint import load_model
from rlprune.config import PruneConfig, RolloutConfig
from rlprune.data import load_dataset
from rlprune.models import build_model, set_layout
from rlprune.pruning import find_units
from rlprune.rollouts import NaiveScorer, PrefixScorer
from rlprune.search import prune


def _rate(fn, reps: int) -> float:
    """Calls per second: 1 / median of ``reps`` timed calls after one warm-up call (the median
    resists the noise of a shared 2-core machine)."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)


def _suffix_share(model: torch.nn.Module, scorer: PrefixScorer, x: torch.Tensor) -> float:
    """MACs of the suffix graph / MACs of the whole model (per image)."""
    total, _, layer, _ = tp.utils.count_ops_and_params(model, x[:1], layer_wise=True)
    per_name = {n: float(layer.get(m) or 0.0) for n, m in model.named_modules()}
    suffix = sum(
        per_name.get(str(n.target), 0.0) for n in scorer.suffix.graph.nodes if n.op == "call_module"
    )
    return suffix / float(total)


def bench_model(
    name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, calib: torch.Tensor, k: int
) -> list[float]:
    model = set_layout(model.eval(), False)
    nhwc = set_layout(copy.deepcopy(model), True)
    g = torch.Generator().manual_seed(0)
    print(
        f"\n### {name}: reward set {len(y)} images, adaptive BN on {len(calib)} calibration "
        f"images (the default), batch 250; batched = K = {k} masks per pass, adaptive BN off\n"
    )
    print(
        "| unit | ch | suffix MACs | naive r/s | naive NHWC r/s | fast r/s | fast/naive "
        "| fast/naive NHWC | MAC bound | fast, no BN adapt r/s | batched, no BN adapt r/s "
        "| cache MiB | fast bf16 r/s | bf16/naive | bf16 max abs diff pp |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios, bf16_ratios = [], []
    for unit in find_units(model, x[:1]):
        masks = (torch.rand(k, unit.channels, generator=g) > 0.3).float()
        naive = NaiveScorer(model, unit, x, y, 250, calib_x=calib)
        naive_cl = NaiveScorer(nhwc, unit, x, y, 250, calib_x=calib)
        fast = PrefixScorer(nhwc, unit, x, y, 250, calib_x=calib)
        r_naive = _rate(lambda n=naive, m=masks: n.accuracy(m[0]), 3)
        r_naive_cl = _rate(lambda n=naive_cl, m=masks: n.accuracy(m[0]), 3)
        r_fast = _rate(lambda f=fast, m=masks: f.accuracy(m[0]), 5)
        r_bf16 = _rate(lambda f=fast, m=masks: _bf16(f.accuracy, m[0]), 5)
        diff = max(abs(_bf16(fast.accuracy, m) - fast.accuracy(m)) for m in masks[:6])
        share = _suffix_share(model, fast, x)
        plain = PrefixScorer(nhwc, unit, x, y, 250)
        r_plain = _rate(lambda f=plain, m=masks: f.accuracy(m[0]), 5)
        r_batch = k * _rate(lambda f=plain, m=masks: f.accuracies(m), 3)
        plain.close()
        ratios.append(r_fast / r_naive)
        bf16_ratios.append(r_bf16 / r_naive)
        print(
            f"| {unit.name} | {unit.channels} | {100 * share:.0f}% | {r_naive:.2f} | "
            f"{r_naive_cl:.2f} | {r_fast:.2f} | {r_fast / r_naive:.1f}x | "
            f"{r_fast / r_naive_cl:.1f}x | {1 / max(share, 1e-9):.1f}x | {r_plain:.2f} | {r_batch:.2f} | "
            f"{fast.cache_mb:.1f} | {r_bf16:.2f} | {r_bf16 / r_naive:.1f}x | {diff:.1f} |"
        )
        fast.close()
    print(f"\nmedian fast/naive over units: **{statistics.median(ratios):.1f}x** (exact)")
    print(f"median fast bf16/naive over units: {statistics.median(bf16_ratios):.1f}x (not exact)")
    return ratios


def _bf16(fn, mask: torch.Tensor) -> float:
    """``fn(mask)`` under bf16 autocast, as ``rollout.precision=bf16`` runs rollouts."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn(mask)


def bench_search(ckpt: Path, data, channels_last: bool, precision: str = "fp32") -> str:
    model, spec, _ = load_model(ckpt)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        res = prune(
            model,
            data.train,
            data.val,
            PruneConfig(channels_last=channels_last, rollout=RolloutConfig(precision=precision)),
            test=data.test,
            out_dir=out,
            spec=spec,
            hflip=data.hflip,
        )
        wall = time.perf_counter() - t
    agent = sum(u.agent_s for u in res.units)
    tune = sum(u.finetune_s for u in res.units)
    scored = sum(u.rollouts_scored for u in res.units)
    reused = sum(u.rollouts_reused for u in res.units)
    return (
        f"| {'NHWC' if channels_last else 'NCHW'} | {precision} | {wall:.0f} | {agent:.0f} | "
        f"{1e3 * agent / max(1, scored):.0f} | {tune:.0f} | "
        f"{scored} / {reused} | {res.baseline.macs / res.pruned.macs:.2f}x | "
        f"{res.baseline.test_acc:.2f} -> {res.pruned.test_acc:.2f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reward-set", type=int, default=1000)
    p.add_argument("--k", type=int, default=12, help="masks per update for the batched column")
    p.add_argument("--checkpoint", default="runs/demo/base/model.pt")
    p.add_argument("--no-search", action="store_true", help="skip the whole-search timing")
    p.add_argument("--search-only", action="store_true", help="only the whole-search timing")
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
    if not args.search_only:
        bench_model("vgg-small", vgg, x, y, calib, args.k)
        bench_model("resnet20", build_model("resnet20", 1, 10, 28), x, y, calib, args.k)
    if args.no_search:
        return
    if not ckpt.is_file():
        print(f"\n(whole-search timing skipped: no checkpoint at {ckpt}; run `make demo` first)")
        return
    print("\n### whole search, demo settings (vgg-small, --max-acc-drop 1)\n")
    print(
        "| layout | rollouts | wall s | agent s | agent ms per rollout | fine-tune s "
        "| rollouts scored / reused | MACs | test % |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for channels_last, precision in ((True, "fp32"), (False, "fp32"), (True, "bf16")):
        print(bench_search(ckpt, data, channels_last, precision), flush=True)


if __name__ == "__main__":
    main()
