"""``rlprune compare``: the RL agent against heuristic pruners at equal MACs and equal cost.

Protocol (issue 6). Every method starts from the SAME baseline checkpoint and gets the SAME
fine-tuning budget, counted in SGD steps: the RL search fine-tunes ``finetune_steps`` after each
of its ``n_units`` units and then ``round(final_finetune_epochs * steps_per_epoch)`` more, with
``steps_per_epoch = ceil(len(train) / batch_size)``; each heuristic prunes in one shot and then
gets all ``finetune_steps * n_units + round(final_finetune_epochs * steps_per_epoch)`` steps as
ONE :func:`~rlprune.train.fine_tune` call (cosine schedule) with the same ``finetune_lr``,
``batch_size``, ``weight_decay`` and augmentation. Both see the same data: training images for
fine-tuning, validation images for the agent's rewards, ``taylor``'s calibration batch is the
RL search's calibration subset of the training split, and the test split only for the numbers.

For each target in ``--targets`` and each of ``--seeds`` seeds (``seed, seed+1, ...`` from the
config): ``rl`` runs :func:`rlprune.search.prune` in budget mode (run folder
``OUT/rl/t{target}_s{seed}``, resumable), then the heuristics of :mod:`rlprune.baselines`;
``random`` and ``l1-rl-ratios`` reuse the per-unit keep counts ``rl`` chose for that target and
seed. Every pruned model is measured the same way on the CPU: test accuracy, MACs, params and
batch-64 latency (:func:`~rlprune.pruning.measure_latency`, ``latency_runs`` timed passes).

Search time: heuristics are timed around :func:`~rlprune.baselines.prune_to_target` (scores,
selection and surgery; fine-tuning excluded, reported separately as ``finetune_s``); for ``rl``
it is the wall time of the whole ``prune()`` call, which includes its fine-tuning, measurements
and exports (the table's footnote says so).

Outputs in ``--out``: ``compare.json`` (per method and target: mean/std over seeds and the raw
per-seed values), ``compare.md`` (table, command, machine) and ``pareto.png``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import platform
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from rlprune.baselines import BASELINES, COUNT_BASED, MAC_TARGETED, TOLERANCE, prune_to_target
from rlprune.checkpoint import atomic_write, load_model
from rlprune.compare_report import compare_table, pareto_plot
from rlprune.config import PruneConfig, config_to_dict, load_config
from rlprune.data import DatasetSplits, Split, load_dataset
from rlprune.distributed import resolve_device
from rlprune.errors import ConfigError, DataError, RlpruneError
from rlprune.models import ModelSpec, set_layout
from rlprune.pruning import count_macs_params, find_units, measure_latency
from rlprune.search import prune
from rlprune.train import evaluate, fine_tune

__all__ = ["METHODS", "run_compare"]

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("rl", *BASELINES)
"""Every method ``--methods`` accepts, in the order they run (``rl`` first)."""


def _parse_methods(text: str | None) -> list[str]:
    if not text:
        return list(METHODS)
    asked = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in asked if m not in METHODS]
    if unknown or not asked:
        raise ConfigError(
            f"unknown method {unknown[0] if unknown else text!r}; valid: {', '.join(METHODS)}"
        )
    if "rl" not in asked and any(m in COUNT_BASED for m in asked):
        log.info("random / l1-rl-ratios use the counts rl chose: running rl too")
        asked.append("rl")
    return [m for m in METHODS if m in asked]


def _parse_targets(text: str) -> list[float]:
    try:
        targets = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError as e:
        raise ConfigError(f"--targets must be comma-separated numbers, got {text!r}") from e
    if not targets or any(not 0 < t < 1 for t in targets):
        raise ConfigError(f"--targets must be MAC fractions in (0, 1), got {text!r}")
    return targets


def _command(args: argparse.Namespace) -> str:
    """The ``rlprune compare`` command line that reproduces this run."""
    cmd = ["rlprune", "compare", "--checkpoint", str(args.checkpoint), "--dataset", args.dataset]
    if getattr(args, "data_dir", None):
        cmd += ["--data-dir", str(args.data_dir)]
    if getattr(args, "download", False):
        cmd.append("--download")
    if getattr(args, "max_train", None) is not None:
        cmd += ["--max-train", str(args.max_train)]
    cmd += ["--out", str(args.out), "--targets", str(args.targets), "--seeds", str(args.seeds)]
    if getattr(args, "methods", None):
        cmd += ["--methods", str(args.methods)]
    if getattr(args, "config", None):
        cmd += ["--config", str(args.config)]
    for item in getattr(args, "set", None) or []:
        cmd += ["--set", item]
    cmd += ["--device", str(getattr(args, "device", "cpu"))]
    return shlex.join(cmd)


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_pruning": getattr(tp, "__version__", "?"),
        "threads": torch.get_num_threads(),
    }


def _measure(
    model: nn.Module,
    test: Split,
    val: Split,
    example: torch.Tensor,
    runs: int,
    channels_last: bool,
) -> dict[str, Any]:
    """Test/val accuracy, MACs, params and batch-64 latency, all on the CPU, every model in the
    same memory layout (the search's), so latencies compare like for like."""
    set_layout(model.cpu(), channels_last).eval()
    macs, params = count_macs_params(model, example)
    return {
        "test_acc": evaluate(model, test),
        "val_acc": evaluate(model, val),
        "macs": macs,
        "params": params,
        "latency_b64_ms": measure_latency(model, example, batch=64, runs=runs).median_ms,
    }


def _summary(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in runs)

    accs = [float(r["test_acc"]) for r in runs]
    return {
        "target": target,
        "test_acc_mean": statistics.fmean(accs),
        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "val_acc_mean": mean("val_acc"),
        "macs": mean("macs"),
        "macs_ratio": mean("macs_ratio"),
        "params": mean("params"),
        "latency_b64_ms": mean("latency_b64_ms"),
        "search_s": mean("search_s"),
        "macs_within_tolerance": all(r["macs_within_tolerance"] for r in runs),
        "seeds": runs,
    }


def _load(args: argparse.Namespace) -> tuple[nn.Module, ModelSpec | None, DatasetSplits]:
    model, spec, _ = load_model(args.checkpoint)
    data = load_dataset(
        args.dataset,
        data_dir=getattr(args, "data_dir", None),
        download=bool(getattr(args, "download", False)),
        seed=0,
        max_train=getattr(args, "max_train", None),
        max_mb=getattr(args, "data_max_mb", None),
    )
    if spec is not None and (
        spec.in_channels != data.in_channels or spec.num_classes != data.num_classes
    ):
        raise DataError(
            f"the checkpoint's model expects {spec.in_channels}-channel input and "
            f"{spec.num_classes} classes; dataset {data.name} has {data.in_channels} "
            f"channel(s) and {data.num_classes} classes"
        )
    return model, spec, data


@dataclasses.dataclass
class _Run:
    """What one method on one target and seed needs (shared by every method)."""

    model: nn.Module
    spec: ModelSpec | None
    data: DatasetSplits
    cfg: PruneConfig
    target: float
    ft_steps: int
    out: Path
    device: torch.device
    quiet: bool


def _run_rl(run: _Run) -> tuple[nn.Module, dict[str, int], float]:
    """The agent in budget mode: ``(pruned model, kept per unit, prune() wall seconds)``."""
    t0 = time.perf_counter()
    run_dir = run.out / "rl" / f"t{run.target:g}_s{run.cfg.seed}"
    res = prune(
        run.model,
        run.data.train,
        run.data.val,
        run.cfg,
        test=run.data.test,
        out_dir=run_dir,
        spec=run.spec,
        hflip=run.data.hflip,
        resume=(run_dir / "config.yaml").exists(),  # a rerun reuses a finished search
        device=run.device,
        progress=not run.quiet,
    )
    kept = {r["unit"]: int(r["channels_after"]) for r in res.units}
    return res.model, kept, time.perf_counter() - t0


def _run_heuristic(
    run: _Run, method: str, counts: dict[str, int] | None
) -> tuple[nn.Module, dict[str, int], float, float]:
    """Prune a copy, then the equal fine-tune: ``(model, kept, search s, fine-tune s)``."""
    data, cfg = run.data, run.cfg
    calib = data.train.subset(min(cfg.rollout.calib_set, len(data.train)), seed=cfg.seed + 1)
    model = copy.deepcopy(run.model).cpu()
    t0 = time.perf_counter()
    kept = prune_to_target(
        model,
        method,
        run.target,
        data.val.images[:1],
        calib=(calib.images, calib.labels),
        counts=counts,
        seed=cfg.seed,
        min_keep=cfg.min_keep,
        exclude=cfg.exclude,
    )
    set_layout(model, cfg.channels_last)  # the layout rl's search fine-tunes in
    t1 = time.perf_counter()
    fine_tune(
        model,
        data.train,
        run.ft_steps,
        cfg.finetune_lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        hflip=data.hflip,
        generator=torch.Generator().manual_seed(cfg.seed),
        device=run.device,
        progress=not run.quiet,
        desc=f"fine-tune {method}",
    )
    return model, kept, t1 - t0, time.perf_counter() - t1


def run_compare(args: argparse.Namespace) -> str:
    """Run the comparison described in the module docstring; returns the markdown table.

    Args:
        args: ``checkpoint, dataset, data_dir, download, max_train, out, targets, seeds,
            methods, config, set, device, quiet`` (as parsed by ``rlprune compare``).

    Raises:
        ConfigError: unknown method, bad targets/seeds/config. DataError: data does not fit.
        RlpruneError: a MAC-targeting heuristic missed its target by more than 2%.
    """
    methods = _parse_methods(getattr(args, "methods", None))
    targets = _parse_targets(args.targets)
    n_seeds = int(args.seeds)
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n_seeds}")
    base_cfg = load_config(
        PruneConfig, getattr(args, "config", None), list(getattr(args, "set", None) or [])
    )
    device = resolve_device(str(getattr(args, "device", "cpu")))
    quiet = bool(getattr(args, "quiet", False))
    model, spec, data = _load(args)
    out = Path(args.out)
    example = data.val.images[:1]
    n_units = len(find_units(model, example, base_cfg.exclude))
    steps_per_epoch = math.ceil(len(data.train) / base_cfg.batch_size)
    ft_steps = base_cfg.finetune_steps * n_units + round(
        base_cfg.final_finetune_epochs * steps_per_epoch
    )
    log.info("%d units; every method gets %d fine-tune steps", n_units, ft_steps)
    baseline = _measure(
        copy.deepcopy(model),
        data.test,
        data.val,
        example,
        base_cfg.latency_runs,
        base_cfg.channels_last,
    )

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in methods}
    for target, i in itertools.product(targets, range(n_seeds)):
        key, seed = f"{target:g}", base_cfg.seed + i
        cfg = dataclasses.replace(
            base_cfg,
            seed=seed,
            reward=dataclasses.replace(base_cfg.reward, mode="budget", target_macs=target),
        )
        run = _Run(model, spec, data, cfg, target, ft_steps, out, device, quiet)
        counts: dict[str, int] | None = None
        for method in methods:  # rl first: random and l1-rl-ratios reuse its counts
            finetune_s = 0.0
            if method == "rl":
                pruned, counts, search_s = _run_rl(run)
                kept = dict(counts)
            else:
                pruned, kept, search_s, finetune_s = _run_heuristic(run, method, counts)
            row = _measure(
                pruned, data.test, data.val, example, cfg.latency_runs, cfg.channels_last
            )
            ratio = row["macs"] / baseline["macs"]
            ok = abs(ratio / target - 1) <= TOLERANCE
            if not ok and method in MAC_TARGETED:  # prune_to_target checks it already
                raise RlpruneError(f"{method} reached MAC ratio {ratio:.3f}, not {target}")
            if not ok:
                log.warning("%s (target %s, seed %d): MAC ratio %.3f", method, key, seed, ratio)
            row.update(
                seed=seed,
                macs_ratio=ratio,
                macs_within_tolerance=ok,
                search_s=search_s,
                finetune_s=finetune_s,
                finetune_steps=ft_steps if method != "rl" else None,
                kept=kept,
            )
            raw[method].setdefault(key, []).append(row)
            msg = "%s, target %s, seed %d: test acc %.2f%%, MACs %.3f"
            log.info(msg, method, key, seed, row["test_acc"], ratio)

    report: dict[str, Any] = {
        "command": _command(args),
        "machine": _machine(),
        "config": config_to_dict(base_cfg),
        "n_units": n_units,
        "n_seeds": n_seeds,
        "finetune_steps": ft_steps,
        "targets": targets,
        "methods": methods,
        "baseline": baseline,
        "results": {
            m: {k: _summary(runs, float(k)) for k, runs in per.items()} for m, per in raw.items()
        },
    }
    text = compare_table(report)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "compare.json", lambda f: f.write(json.dumps(report, indent=2)), mode="w")
    atomic_write(out / "compare.md", lambda f: f.write(text), mode="w")
    pareto_plot(report, out / "pareto.png")
    log.info("comparison written to %s\n%s", out / "compare.md", text)
    return text
