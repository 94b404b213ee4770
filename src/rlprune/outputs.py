"""Measurements and artefacts of a finished search: pruned-model files and the report."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.checkpoint import save_checkpoint
from rlprune.config import PruneConfig, config_to_dict
from rlprune.data import Split
from rlprune.models import ModelSpec
from rlprune.pruning import (
    count_macs_params,
    file_size,
    measure_latency,
    measure_latency_paired,
    skipped_units,
)
from rlprune.pruning.export import export_onnx, export_pt2
from rlprune.report import write_report
from rlprune.runstate import RunDir
from rlprune.train import evaluate

__all__ = ["LATENCY_ROUNDS", "Measurement", "measure_model", "side_by_side", "write_outputs"]

log = logging.getLogger(__name__)
LATENCY_ROUNDS = 3  # alternating rounds of the side-by-side latencies


@dataclass
class Measurement:
    """A model's numbers before or after pruning (a ``report.json`` section).

    Accuracies in %, latencies in ms (median and inter-quartile range of timed passes; absent
    where latency was not measured).
    """

    val_acc: float
    test_acc: float | None  # None: no test split (left out of the JSON, so read back as None)
    macs: int
    params: int
    threads: int
    latency_b1_ms: float | None = None
    latency_b1_iqr_ms: float | None = None
    latency_b64_ms: float | None = None
    latency_b64_iqr_ms: float | None = None
    reward_set_acc: float | None = None  # baseline only: what rollouts are compared with
    file_bytes: int | None = None  # size of the saved model file

    def to_dict(self) -> dict[str, Any]:
        """JSON form; fields that were not measured are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"test_acc": None, **{k: v for k, v in d.items() if k in names}})


def measure_model(
    model: nn.Module,
    val: Split,
    test: Split | None,
    example_input: torch.Tensor,
    latency_runs: int = 20,
    device: torch.device | str = "cpu",
    latency: bool = True,
) -> Measurement:
    """Accuracy (val, test), MACs, params and (unless ``latency=False``) latency at batch 1
    and 64."""
    macs, params = count_macs_params(model, example_input)
    out = Measurement(
        val_acc=evaluate(model, val, device=device),
        test_acc=evaluate(model, test, device=device) if test is not None else None,
        macs=macs,
        params=params,
        threads=torch.get_num_threads(),
    )
    if latency:
        b1 = measure_latency(model, example_input, batch=1, runs=latency_runs)
        b64 = measure_latency(model, example_input, batch=64, runs=latency_runs)
        out.latency_b1_ms, out.latency_b1_iqr_ms = b1.median_ms, b1.iqr_ms
        out.latency_b64_ms, out.latency_b64_iqr_ms = b64.median_ms, b64.iqr_ms
    return out


def side_by_side(
    baseline: Measurement, pruned: Measurement, models: tuple[nn.Module, nn.Module],
    example_input: torch.Tensor, latency_runs: int,
) -> tuple[Measurement, Measurement]:  # fmt: skip
    """``baseline`` and ``pruned`` with their latencies measured side by side after the search
    (:func:`~rlprune.pruning.measure_latency_paired`: at least ``latency_runs`` passes per
    model and batch, over :data:`LATENCY_ROUNDS` alternating rounds), not minutes or a resume
    apart."""
    out = []
    runs = -(-latency_runs // LATENCY_ROUNDS)
    for m, stats in zip((baseline, pruned), measure_latency_paired(
            models, example_input, runs=runs, rounds=LATENCY_ROUNDS), strict=True):  # fmt: skip
        out.append(dataclasses.replace(
            m, latency_b1_ms=stats[1].median_ms, latency_b1_iqr_ms=stats[1].iqr_ms,
            latency_b64_ms=stats[64].median_ms, latency_b64_iqr_ms=stats[64].iqr_ms))  # fmt: skip
    return out[0], out[1]


def write_outputs(
    run: RunDir,
    model: nn.Module,
    original: nn.Module,
    spec: ModelSpec | None,
    example_input: torch.Tensor,
    baseline: Measurement,
    pruned: Measurement,
    records: list[dict[str, Any]],
    cfg: PruneConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.pt`` (weights_only-loadable), ``model.pt2``, ``report.json/.md`` and plots.

    Sets ``file_bytes`` of both measurements; ``extra`` sections (e.g. ``latency``: predicted
    vs measured) go into ``report.json`` as they are.
    """
    meta = {"baseline": baseline.to_dict(), "pruned": pruned.to_dict()}
    ckpt = save_checkpoint(run.root / "model.pt", model, spec, meta=meta, pruned=True)
    pruned.file_bytes = file_size(ckpt)
    export_pt2(model, example_input, run.root / "model.pt2")
    export_onnx(model, example_input, run.root / "model.onnx")
    base_file = save_checkpoint(run.root / "state" / "baseline_model.pt", original, spec)
    baseline.file_bytes = file_size(base_file)
    report = {
        "config": config_to_dict(cfg),
        "model": spec.to_dict() if spec is not None else None,
        "baseline": baseline.to_dict(),
        "pruned": pruned.to_dict(),
        "units": records,
        "not_pruned": skipped_units(model),  # units the masked-vs-cut check skipped
        **(extra or {}),
    }
    run.write_json("report.json", report)
    write_report(run.root)
    return run.root / "report.json"
