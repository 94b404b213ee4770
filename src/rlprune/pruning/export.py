"""Deployable exports of a (pruned) model: a ``torch.export`` program and, if available, ONNX."""

from __future__ import annotations

import importlib.util
import json
import logging
import zipfile
from pathlib import Path

import torch
from torch import nn

from rlprune.checkpoint import atomic_write
from rlprune.errors import CheckpointError
from rlprune.quiet import quiet_third_party

__all__ = ["export_onnx", "export_pt2", "load_pt2"]

log = logging.getLogger(__name__)


def export_pt2(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path | None:
    """Save ``model`` (eval mode) as a ``torch.export`` ``.pt2`` program with a dynamic batch.

    Best effort: a model ``torch.export`` cannot capture (data-dependent control flow) logs a
    warning and returns None; the search's results and ``model.pt`` are unaffected.
    """
    model.eval()
    x = example_input[:1].expand(2, *example_input.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with quiet_third_party():
            program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    except Exception as e:  # torch.export raises many error types
        log.warning(
            "torch.export cannot capture this model (%s); no .pt2 written", type(e).__name__
        )
        return None
    with quiet_third_party():  # NHWC weights: "No complete tensor found" (harmless on the CPU)
        return atomic_write(path, lambda f: torch.export.save(program, f))


def _check_no_pickle(path: Path) -> None:
    """Refuse a ``.pt2`` whose weights or constants would be unpickled (code execution)."""
    try:
        with zipfile.ZipFile(path) as z:
            configs = [
                n
                for n in z.namelist()
                if n.endswith(("weights_config.json", "constants_config.json"))
            ]
            for name in configs:
                entries = json.loads(z.read(name)).get("config", {})
                for key, meta in entries.items():
                    if (
                        not isinstance(meta, dict)
                        or meta.get("use_pickle", False)
                        or ("tensor_meta" not in meta)
                    ):
                        raise CheckpointError(
                            f"{path}: refusing to load: entry {key!r} would be unpickled"
                        )
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable .pt2 program ({e})") from e


def load_pt2(path: str | Path) -> nn.Module:
    """Load a ``.pt2`` program as a callable module.

    ``torch.export.load`` unpickles weights flagged ``use_pickle`` with ``weights_only=False``;
    such files (never written by rlprune) are refused before loading.
    """
    _check_no_pickle(Path(path))
    return torch.export.load(str(path)).module()


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path | None:
    """Export ONNX if the ``onnx`` package is installed; otherwise log and return None."""
    if importlib.util.find_spec("onnx") is None:
        log.info("onnx is not installed: skipped the ONNX export (pip install onnx onnxscript)")
        return None
    model.eval()
    path = Path(path)
    try:
        x = example_input[:1].expand(2, *example_input.shape[1:]).contiguous()
        batch = torch.export.Dim("batch", min=1, max=65536)
        with quiet_third_party():  # "torchvision is not installed", pytree deprecations
            program = torch.onnx.export(
                model, (x,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False
            )
        assert program is not None
        atomic_write(path, lambda f: f.write(program.model_proto.SerializeToString()))
    except Exception as e:  # the exporter's optional dependencies vary by torch version
        log.warning(
            "ONNX export failed (%s: %s); the .pt2 export is unaffected", type(e).__name__, e
        )
        path.unlink(missing_ok=True)
        return None
    return path
