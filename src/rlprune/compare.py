"""``rlprune compare``: the RL agent against heuristic pruners at equal MACs and equal cost.

Protocol. Every method starts from the SAME baseline checkpoint and gets the SAME fine-tuning
budget, counted in SGD steps: the RL search fine-tunes ``finetune_steps`` after each of its
``n_units`` units and then ``round(final_finetune_epochs * steps_per_epoch)`` more, with
``steps_per_epoch = ceil(len(train) / batch_size)``; each heuristic prunes in one shot and then
gets all ``finetune_steps * n_units + round(final_finetune_epochs * steps_per_epoch)`` steps as
ONE :func:`~rlprune.train.fine_tune` call (cosine schedule) with the same ``finetune_lr``,
``batch_size``, ``weight_decay`` and augmentation. Both see the same data: training images for
fine-tuning, validation images for the agent's rewards, ``taylor``'s calibration batch is the
RL search's calibration subset of the training split, and the test split only for the numbers.

For each target in ``targets`` and each of ``seeds`` seeds (``seed, seed+1, ...`` from the
search config): ``rl`` runs :func:`rlprune.search.prune` in budget mode (run folder
``OUT/rl/t{target}_s{seed}``, resumable), then the other asked methods of :data:`REGISTRY`
(default :data:`DEFAULT_METHODS`);
``random`` and ``l1-rl-ratios`` reuse the per-unit keep counts ``rl`` chose for that target and
seed. Every pruned model is measured the same way: test accuracy on the comparison's device,
MACs, params and batch-64 latency on the CPU (:func:`~rlprune.pruning.measure_latency`,
``latency_runs`` timed passes).

Search time: heuristics are timed around :func:`~rlprune.baselines.prune_to_target` (scores,
selection and surgery; fine-tuning excluded, reported separately as ``finetune_s``); for ``rl``
it is the wall time of the whole ``prune()`` call, which includes its fine-tuning, measurements
and exports (the table's footnote says so).

Each measured (method, target, seed) cell is saved at once in ``OUT/cells`` (see
:mod:`rlprune.compare_cells`); a rerun reuses finished cells, and the table is built from every
cell in ``OUT`` for the asked methods and targets, so per-seed invocations into one ``OUT``
(``seeds=1`` with ``seed=s``) add up to one table. Outputs in ``OUT``: ``compare.json`` (per
method and target: mean/std over seeds and the raw per-seed values), ``compare.md`` (table,
command, machine), ``pareto.png`` and ``pareto_latency.png`` (x: measured latency).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.baselines import TOLERANCE
from rlprune.checkpoint import atomic_write, load_model
from rlprune.compare_cells import (
    CellContext,
    CellStore,
    MethodRun,
    Runner,
    file_sha256,
    heuristic_runner,
    rl_runner,
    run_random_search,
    run_tp_iterative,
)
from rlprune.compare_report import (
    command_line,
    compare_table,
    cpu_summary,
    machine_info,
    pareto_plot,
    summarize,
)
from rlprune.config import PruneConfig, _check, config_to_dict
from rlprune.data import DATASETS, DatasetSplits, load_dataset
from rlprune.distributed import resolve_device
from rlprune.errors import DataError, RlpruneError
from rlprune.machine import device_summary
from rlprune.models import ModelSpec, set_layout
from rlprune.pruning import count_macs_params, find_units, measure_latency
from rlprune.train import evaluate

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "REGISTRY",
    "CellContext",
    "CompareConfig",
    "CompareResult",
    "Method",
    "MethodRun",
    "compare",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class Method:
    """A registry entry.

    ``mac_targeted``: the runner must land within 2% of the target MACs (a miss is an error;
    otherwise only a warning and a † in the table). ``uses_rl_counts``: it reads
    ``ctx.rl_counts`` (``rl`` then runs too). ``uses_rl_rollouts``: it reads
    ``ctx.rl_rollouts``, the most reward-set evaluations any rl search of the cell spent (``rl``
    runs too if no rl search was asked for). ``equal_finetune``: it
    spends exactly the equal budget of SGD steps (recorded as ``finetune_steps``): one cosine
    schedule (:func:`equal_fine_tune`), or tp-iterative's steps between its pruning steps, which
    it checks add up to the budget. The rl searches spend the same number by construction.
    """

    run: Runner
    mac_targeted: bool = False
    uses_rl_counts: bool = False
    uses_rl_rollouts: bool = False
    equal_finetune: bool = True


REGISTRY: dict[str, Method] = {
    "rl": Method(rl_runner(), equal_finetune=False),
    "rl-layerwise": Method(rl_runner("layerwise"), equal_finetune=False),
    "rl-joint": Method(rl_runner("joint"), equal_finetune=False),
    "random": Method(heuristic_runner("random"), uses_rl_counts=True),
    "l1-uniform": Method(heuristic_runner("l1-uniform"), mac_targeted=True),
    "global-magnitude": Method(heuristic_runner("global-magnitude"), mac_targeted=True),
    "taylor": Method(heuristic_runner("taylor"), mac_targeted=True),
    "bn-scale": Method(heuristic_runner("bn-scale"), mac_targeted=True),
    "l1-rl-ratios": Method(heuristic_runner("l1-rl-ratios"), uses_rl_counts=True),
    "tp-iterative": Method(run_tp_iterative, mac_targeted=True),
    "random-search": Method(run_random_search, mac_targeted=True, uses_rl_rollouts=True),
}
"""Every comparison method, in the order they run (``rl`` first: others may use its counts)."""

METHODS: tuple[str, ...] = tuple(REGISTRY)
"""Every method name ``CompareConfig.methods`` accepts."""

DEFAULT_METHODS: tuple[str, ...] = tuple(
    m for m in METHODS if m not in ("rl-layerwise", "rl-joint")
)
"""What ``compare`` runs unless told: ``rl`` once, with the config's strategy (``auto``: the
joint search for a MAC budget), not again under its strategy's own name."""


# ----------------------------------------------------------------------------- config, result
@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """One comparison. ``prune`` is the base search config: its ``seed`` is the first seed,
    and each cell replaces ``seed`` and sets budget mode with the cell's ``target_macs``."""

    checkpoint: Path
    dataset: str
    out: Path
    targets: tuple[float, ...] = (0.5, 0.3)
    seeds: int = 3
    methods: tuple[str, ...] = DEFAULT_METHODS
    prune: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    data_dir: Path | None = None
    download: bool = False
    max_train: int | None = None
    data_max_mb: float | None = None
    device: str = "cpu"
    quiet: bool = False

    def __post_init__(self) -> None:
        # Accept str paths and lists from Python callers; store the declared types.
        for name in ("checkpoint", "out", "data_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "targets", tuple(float(t) for t in self.targets))
        object.__setattr__(self, "methods", tuple(self.methods))
        _check(self.dataset in DATASETS, "dataset", f"one of {', '.join(DATASETS)}")
        t = self.targets
        _check(bool(t), "targets", "give at least one MAC fraction, e.g. 0.5,0.3")
        _check(all(0 < x < 1 for x in t), "targets", f"MAC fractions in (0, 1), got {t}")
        _check(len(set(t)) == len(t), "targets", f"each target once, got {t}")
        _check(self.seeds >= 1, "seeds", f"must be >= 1, got {self.seeds}")
        valid = ", ".join(METHODS)
        bad = [m for m in self.methods if m not in REGISTRY]
        _check(not bad, "methods", f"unknown method {(bad or [''])[0]!r}; valid: {valid}")
        _check(bool(self.methods), "methods", f"give at least one of {valid}")
        _check(len(set(self.methods)) == len(self.methods), "methods", "each method once")
        _check(isinstance(self.prune, PruneConfig), "prune", "must be a PruneConfig")
        _check(self.max_train is None or self.max_train >= 2, "max_train", "must be >= 2")
        _check(self.data_max_mb is None or self.data_max_mb > 0, "data_max_mb", "must be > 0")
        _check(
            self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:"),
            "device",
            f"cpu | cuda | cuda:N | auto, got {self.device!r}",
        )

    @property
    def seed_list(self) -> list[int]:
        """The seeds this call runs: ``prune.seed, prune.seed + 1, ...``."""
        return [self.prune.seed + i for i in range(self.seeds)]

    def cell_config(self, target: float, seed: int) -> PruneConfig:
        """The search config of one cell: budget mode at ``target``, seed ``seed``."""
        reward = dataclasses.replace(self.prune.reward, mode="budget", target_macs=target)
        return dataclasses.replace(self.prune, seed=seed, reward=reward)


@dataclasses.dataclass(frozen=True)
class CompareResult:
    """What :func:`compare` returns; ``report`` is the content of ``compare.json``."""

    report: dict[str, Any]
    markdown: str
    out: Path
    cells_run: int  # cells measured by this call
    cells_reused: int  # finished cells loaded from OUT/cells

    def summary(self, method: str, target: float) -> dict[str, Any]:
        """Mean/std over seeds of ``method`` at ``target`` (``report["results"]`` entry)."""
        summary: dict[str, Any] = self.report["results"][method][f"{target:g}"]
        return summary


# ----------------------------------------------------------------------------- running
@dataclasses.dataclass(frozen=True)
class _Setup:
    model: nn.Module
    spec: ModelSpec | None
    data: DatasetSplits
    n_units: int
    ft_steps: int
    baseline: dict[str, Any]
    device: torch.device
    checkpoint_sha256: str


def _measure(
    model: nn.Module, data: DatasetSplits, cfg: PruneConfig, device: torch.device
) -> dict[str, Any]:
    """Test/val accuracy on ``device`` (16k images: resnet20 takes 12 s of a CPU thread), then
    MACs, params and batch-64 latency on the CPU; every model in the same memory layout (the
    search's), so latencies compare like for like. Leaves ``model`` on the CPU."""
    example = data.val.images[:1]
    set_layout(model.to(device), cfg.channels_last).eval()
    accs = [evaluate(model, split, device=device) for split in (data.test, data.val)]
    set_layout(model.cpu(), cfg.channels_last)
    macs, params = count_macs_params(model, example)
    return {
        "test_acc": accs[0],
        "val_acc": accs[1],
        "macs": macs,
        "params": params,
        "latency_b64_ms": measure_latency(
            model, example, batch=64, runs=cfg.latency_runs
        ).median_ms,
    }


def _setup(cfg: CompareConfig) -> _Setup:
    model, spec, _ = load_model(cfg.checkpoint)
    data = load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir,
        download=cfg.download,
        seed=0,
        max_train=cfg.max_train,
        max_mb=cfg.data_max_mb,
    )
    if spec is not None and (
        spec.in_channels != data.in_channels or spec.num_classes != data.num_classes
    ):
        raise DataError(
            f"the checkpoint's model expects {spec.in_channels}-channel input and "
            f"{spec.num_classes} classes; dataset {data.name} has {data.in_channels} "
            f"channel(s) and {data.num_classes} classes"
        )
    base = cfg.prune
    n_units = len(find_units(model, data.val.images[:1], base.exclude))
    ft_steps = base.finetune_steps * n_units + base.final_steps(len(data.train))
    log.info("%d units; every method gets %d fine-tune steps", n_units, ft_steps)
    device = resolve_device(cfg.device)
    baseline = _measure(copy.deepcopy(model), data, base, device)
    sha = file_sha256(cfg.checkpoint)
    return _Setup(model, spec, data, n_units, ft_steps, baseline, device, sha)


def _run_order(methods: Sequence[str]) -> list[str]:
    asked = list(methods)
    users = [m for m in asked if REGISTRY[m].uses_rl_counts]
    searches = [m for m in asked if m.startswith("rl")]
    users += [m for m in asked if REGISTRY[m].uses_rl_rollouts and not searches]
    if users and "rl" not in asked:
        log.info("%s use the counts rl chose: running rl too", ", ".join(users))
        asked.append("rl")
    return [m for m in REGISTRY if m in asked]


def _fingerprint(cfg: CompareConfig, setup: _Setup, target: float, seed: int) -> dict[str, Any]:
    """Everything a cell's numbers depend on (not the device, the output folder or -q)."""
    return {
        "checkpoint_sha256": setup.checkpoint_sha256,
        "dataset": cfg.dataset,
        "max_train": cfg.max_train,
        "data_max_mb": cfg.data_max_mb,
        "finetune_steps": setup.ft_steps,
        "config": config_to_dict(cfg.cell_config(target, seed)),
    }


def _run_cell(method: str, ctx: CellContext, setup: _Setup) -> dict[str, Any]:
    """Run one method on one target and seed and measure it: the cell's result row."""
    entry = REGISTRY[method]
    res = entry.run(ctx)
    row = _measure(res.model, ctx.data, ctx.cfg, setup.device)
    ratio, target = row["macs"] / setup.baseline["macs"], ctx.target
    ok = abs(ratio / target - 1) <= TOLERANCE
    if not ok and entry.mac_targeted:
        raise RlpruneError(f"{method} reached MAC ratio {ratio:.3f}, not {target}")
    if not ok:
        log.warning("%s (target %g, seed %d): MAC ratio %.3f", method, target, ctx.seed, ratio)
    row.update(
        seed=ctx.seed,
        macs_ratio=ratio,
        macs_within_tolerance=ok,
        search_s=res.search_s,
        finetune_s=res.finetune_s,
        finetune_steps=ctx.ft_steps if entry.equal_finetune else None,
        kept=res.kept,
        rollouts=res.rollouts,
        cpu=cpu_summary(),  # cells of one table may come from different machines
        device=device_summary(setup.device),  # and fine-tune on a CPU (fp32) or a GPU (bf16)
    )
    msg = "%s, target %g, seed %d: test acc %.2f%%, MACs %.3f"
    log.info(msg, method, target, ctx.seed, row["test_acc"], ratio)
    return row


def compare(cfg: CompareConfig) -> CompareResult:
    """Run the comparison described in the module docstring and write its outputs.

    Raises:
        ConfigError: a finished cell in ``cfg.out`` was made with another config.
        DataError: the dataset does not fit the checkpoint's model.
        RlpruneError: a MAC-targeting method missed its target by more than 2%.
    """
    methods = _run_order(cfg.methods)
    setup = _setup(cfg)
    store = CellStore(cfg.out / "cells", lambda t, s: _fingerprint(cfg, setup, t, s))
    for method, target in itertools.product(methods, cfg.targets):
        store.rows(method, target)  # refuse a cell of another config before any work
    ran = reused = 0
    for target, seed in itertools.product(cfg.targets, cfg.seed_list):
        ctx = CellContext(
            setup.model,
            setup.spec,
            setup.data,
            cfg.cell_config(target, seed),
            target,
            setup.ft_steps,
            cfg.out,
            setup.device,
            cfg.quiet,
        )
        for method in methods:  # rl first: other methods may reuse its counts
            row = store.load(method, target, seed)
            if row is None:
                row = _run_cell(method, ctx, setup)
                store.write(method, target, seed, row)
                ran += 1
            else:
                log.info("%s, target %g, seed %d: reusing its cell", method, target, seed)
                reused += 1
            if method == "rl":
                ctx = dataclasses.replace(ctx, rl_counts=dict(row["kept"]))
            if method.startswith("rl") and row.get("rollouts") is not None:
                most = max(ctx.rl_rollouts or 0, int(row["rollouts"]))
                ctx = dataclasses.replace(ctx, rl_rollouts=most)
    report = _report(cfg, setup, methods, store)
    text = compare_table(report)
    out = cfg.out
    atomic_write(out / "compare.json", lambda f: f.write(json.dumps(report, indent=2)), mode="w")
    atomic_write(out / "compare.md", lambda f: f.write(text), mode="w")
    pareto_plot(report, out / "pareto.png")
    pareto_plot(report, out / "pareto_latency.png", x="latency")
    log.info("comparison written to %s", out / "compare.md")
    return CompareResult(report, text, out, ran, reused)


def _report(
    cfg: CompareConfig, setup: _Setup, methods: list[str], store: CellStore
) -> dict[str, Any]:
    """``compare.json``: every cell in ``OUT/cells`` for these methods and targets, any seed."""
    results = {m: {f"{t:g}": store.rows(m, t) for t in cfg.targets} for m in methods}
    seeds = sorted({r["seed"] for per in results.values() for rs in per.values() for r in rs})
    return {
        "command": command_line(cfg, DEFAULT_METHODS),  # --methods only if not the default set
        "machine": machine_info(),
        "config": config_to_dict(cfg.prune),
        "n_units": setup.n_units,
        "n_seeds": len(seeds),
        "seeds": seeds,
        "finetune_steps": setup.ft_steps,
        "targets": list(cfg.targets),
        "methods": methods,
        "baseline": setup.baseline,
        "results": {
            m: {k: summarize(rows, float(k)) for k, rows in per.items() if rows}
            for m, per in results.items()
        },
    }
