"""Deployable exports of a (pruned) model: a ``torch.export`` program and, if available, ONNX."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from rlprune.checkpoint import atomic_write

__all__ = ["export_onnx", "export_pt2", "load_pt2"]

log = logging.getLogger(__name__)


def export_pt2(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Save ``model`` (eval mode) as a ``torch.export`` ``.pt2`` program with a dynamic batch."""
    model.eval()
    x = example_input[:1].expand(2, *example_input.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    return atomic_write(path, lambda f: torch.export.save(program, f))


def load_pt2(path: str | Path) -> nn.Module:
    """Load a ``.pt2`` program as a callable module."""
    return torch.export.load(str(path)).module()


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path | None:
    """Export ONNX if the ``onnx`` package is installed; otherwise log and return None."""
    if importlib.util.find_spec("onnx") is None:
        log.info("onnx is not installed: skipped the ONNX export (pip install onnx onnxscript)")
        return None
    model.eval()
    path = Path(path)
    try:
        torch.onnx.export(model, (example_input[:1],), str(path), dynamo=True)
    except Exception as e:  # the exporter's optional dependencies vary by torch version
        log.warning(
            "ONNX export failed (%s: %s); the .pt2 export is unaffected", type(e).__name__, e
        )
        path.unlink(missing_ok=True)
        return None
    return path
