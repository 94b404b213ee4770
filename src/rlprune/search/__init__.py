"""The search: prune a trained CNN with the RL agent, then fine-tune and measure it.

:func:`prune` sets up what every strategy shares (:class:`~rlprune.search.session.Session`),
runs the strategy ``PruneConfig.search_strategy()`` resolves, then does the final fine-tune,
measures the result and writes the run folder's outputs. Strategies live beside it:
``layerwise`` (Huang et al. 2018, :mod:`rlprune.search.layerwise`) and ``joint`` (all units at
once, DECORE-style, :mod:`rlprune.search.joint`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.config import PruneConfig, StrategyName
from rlprune.data import Split
from rlprune.distributed import DistContext
from rlprune.env import PruningEnv
from rlprune.models import ModelSpec, runs_channels_last, set_layout
from rlprune.outputs import (
    LATENCY_ROUNDS,
    Measurement,
    measure_model,
    side_by_side,
    write_outputs,
)
from rlprune.pruning import find_units
from rlprune.search.costs import latency_report, search_lut
from rlprune.search.joint import JointStartError, joint
from rlprune.search.layerwise import layerwise
from rlprune.search.records import Decision, UnitProgress, UnitRecord
from rlprune.search.runtime import SearchRuntime
from rlprune.search.session import Session, Strategy
from rlprune.train import evaluate

__all__ = [
    "STRATEGIES",
    "Decision",
    "PruneResult",
    "Session",
    "Strategy",
    "UnitProgress",
    "UnitRecord",
    "prune",
]

log = logging.getLogger(__name__)

STRATEGIES: dict[StrategyName, Strategy] = {"layerwise": layerwise, "joint": joint}
"""Search strategies by name (:meth:`PruneConfig.search_strategy`): each prunes ``session.model``
in place."""


@dataclass
class PruneResult:
    """What :func:`prune` returns."""

    model: nn.Module
    baseline: Measurement
    pruned: Measurement
    units: list[UnitRecord]
    out_dir: Path | None = None
    strategy: StrategyName = "layerwise"  # the one that ran (``auto`` resolved, fallback taken)


def prune(
    model: nn.Module,
    train: Split,
    val: Split,
    config: PruneConfig | None = None,
    *,
    test: Split | None = None,
    out_dir: str | Path,
    spec: ModelSpec | None = None,
    hflip: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
    dist_ctx: DistContext | None = None,
) -> PruneResult:
    """Prune ``model`` with the RL agent.

    Args:
        model: a trained CNN (not modified; a pruned copy is returned).
        train: fine-tuning data. val: reward set and model selection. test: final numbers only.
        config: search settings (defaults: layer-wise, accuracy-bounded, 1 pp).
        out_dir: run folder (config, metrics, state, report, pruned model files).
        spec: the zoo spec, if any, stored in the pruned-model file.
        hflip: whether fine-tuning may flip images horizontally.
        resume: continue a killed run in ``out_dir`` (same seed -> same masks); refused when
            the folder was made from another config, model or dataset.
        overwrite: replace an earlier run in ``out_dir`` (never a folder that is not a run's).
        device: where fine-tuning runs (rollouts run there too).
        progress: tqdm bars.
        dist_ctx: torchrun job context (rollouts sharded, DDP fine-tuning, rank 0 writes).

    Returns:
        :class:`PruneResult` with the pruned model (NHWC when ``config.channels_last``, the
        default; ``rlprune.models.set_layout(model, False)`` turns it back) and the
        before/after measurements (taken in that layout).
    """
    cfg = config or PruneConfig()
    dist = dist_ctx or DistContext()
    example = val.images[:1].to(next(model.parameters()).device)
    find_units(model, example, cfg.exclude)  # fail early
    if cfg.channels_last and not runs_channels_last(model, example):
        log.warning(
            "the model's forward fails in channels-last memory layout (a .view of a conv "
            "output? .reshape works in both); running in NCHW"
        )
        cfg = dataclasses.replace(cfg, channels_last=False)
    inputs = (model, (train, val, test))
    runtime = SearchRuntime.open(
        out_dir, cfg, resume, dist, device, train, hflip, progress, inputs, overwrite
    )
    cfg = runtime.cfg
    original = copy.deepcopy(model).to(device).eval()
    session = open_session(original, train, val, test, runtime)
    strategy, records = run_strategy(session, cfg, dist.active)  # search, cuts, fine-tunes
    pruned = measure_model(session.model, val, test, session.example, device=device, latency=False)
    baseline = session.baseline
    if dist.is_main:
        unit_rows = [r.to_dict() for r in records]
        timing = f"side by side after the search ({LATENCY_ROUNDS} alternating rounds)"
        extra: dict[str, Any] = {"latency_timing": timing}
        base = set_layout(copy.deepcopy(original), cfg.channels_last)
        baseline, pruned = side_by_side(
            baseline, pruned, (base, session.model), session.example, cfg.latency_runs
        )
        lut = session.env.lut
        if lut is not None:
            counts = {r.unit: r.channels_after for r in records}
            extra["latency"] = latency_report(
                lut, base, session.model, counts, session.example, cfg.latency_runs
            )
        write_outputs(
            runtime.run, session.model, original, spec, session.example,
            baseline, pruned, unit_rows, cfg, extra,
        )  # fmt: skip
    dist.barrier()
    root = runtime.run.root
    return PruneResult(session.model, baseline, pruned, records, root, strategy)


def run_strategy(
    session: Session, cfg: PruneConfig, distributed: bool
) -> tuple[StrategyName, list[UnitRecord]]:
    """Run the strategy ``cfg`` resolves to; with ``strategy=auto``, a joint search that cannot
    start on this model (its global-magnitude start misses the target) gives way to the
    layer-wise walk, which reaches budgets unit by unit. Returns the strategy that ran."""
    strategy = cfg.search_strategy(distributed)
    log.info("search strategy: %s", strategy)
    try:
        return strategy, STRATEGIES[strategy](session)
    except JointStartError as e:
        if cfg.strategy != "auto":
            raise
        log.warning("%s; strategy auto walks layer by layer instead", e)
        return "layerwise", STRATEGIES["layerwise"](session)


def open_session(
    original: nn.Module, train: Split, val: Split, test: Split | None, runtime: SearchRuntime
) -> Session:
    """The live model (a copy of ``original`` in the configured layout), its baseline
    measurements and the environment over the reward and calibration sets."""
    cfg, device = runtime.cfg, runtime.device
    model = set_layout(copy.deepcopy(original), cfg.channels_last)
    example = val.images[:1].to(device)
    reward_set = val.subset(min(cfg.rollout.reward_set, len(val)), seed=cfg.seed)
    calib = train.subset(min(cfg.rollout.calib_set, len(train)), seed=cfg.seed + 1)

    def measure() -> Measurement:
        # no latency here: the report times it beside the pruned model after the search
        m = measure_model(model, val, test, example, device=device, latency=False)
        m.reward_set_acc = evaluate(model, reward_set, device=device)
        return m

    baseline = runtime.baseline(measure)
    assert baseline.reward_set_acc is not None
    lut = search_lut(model, example, cfg, runtime.run, runtime.dist.active)
    env = PruningEnv(
        model,
        (reward_set.images.to(device), reward_set.labels.to(device)),
        (calib.images.to(device), calib.labels.to(device)),
        example,
        cfg,
        baseline.reward_set_acc,
        baseline.macs,
        runtime.dist,
        lut,
    )
    return Session(model, env, runtime, cfg, baseline, val, example)
