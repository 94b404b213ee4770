"""Measurements and artefacts of a finished search: pruned-model files and the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.checkpoint import save_checkpoint
from rlprune.config import PruneConfig, config_to_dict
from rlprune.data import Split
from rlprune.models import ModelSpec
from rlprune.pruning import count_macs_params, file_size, measure_latency
from rlprune.pruning.export import export_onnx, export_pt2
from rlprune.report import write_report
from rlprune.runstate import RunDir
from rlprune.train import evaluate

__all__ = ["measure_model", "write_outputs"]

log = logging.getLogger(__name__)


def measure_model(
    model: nn.Module,
    val: Split,
    test: Split | None,
    example_input: torch.Tensor,
    latency_runs: int = 20,
    device: torch.device | str = "cpu",
    latency: bool = True,
) -> dict[str, Any]:
    """Accuracy (val, test), MACs, params and (unless ``latency=False``) latency at batch 1
    and 64."""
    macs, params = count_macs_params(model, example_input)
    out: dict[str, Any] = {
        "val_acc": evaluate(model, val, device=device),
        "test_acc": evaluate(model, test, device=device) if test is not None else None,
        "macs": macs,
        "params": params,
    }
    for batch in (1, 64) if latency else ():
        lat = measure_latency(model, example_input, batch=batch, runs=latency_runs)
        out[f"latency_b{batch}_ms"] = lat.median_ms
        out[f"latency_b{batch}_iqr_ms"] = lat.iqr_ms
    out["threads"] = torch.get_num_threads()
    return out


def write_outputs(
    run: RunDir,
    model: nn.Module,
    original: nn.Module,
    spec: ModelSpec | None,
    example_input: torch.Tensor,
    baseline: dict[str, Any],
    pruned: dict[str, Any],
    records: list[dict[str, Any]],
    cfg: PruneConfig,
) -> Path:
    """Write ``model.pt`` (weights_only-loadable), ``model.pt2``, ``report.json/.md`` and plots."""
    meta = {"baseline": baseline, "pruned": pruned}
    ckpt = save_checkpoint(run.root / "model.pt", model, spec, meta=meta, pruned=True)
    pruned["file_bytes"] = file_size(ckpt)
    export_pt2(model, example_input, run.root / "model.pt2")
    export_onnx(model, example_input, run.root / "model.onnx")
    base_file = save_checkpoint(run.root / "state" / "baseline_model.pt", original, spec)
    baseline["file_bytes"] = file_size(base_file)
    report = {
        "config": config_to_dict(cfg),
        "model": spec.to_dict() if spec is not None else None,
        "baseline": baseline,
        "pruned": pruned,
        "units": records,
    }
    run.write_json("report.json", report)
    write_report(run.root)
    return run.root / "report.json"
