"""Checkpoint files: atomic writes, safe loads, and pruned-structure round trips.

One format serves baseline and pruned models. A file is a dict of plain types and tensors:

    {"format": "rlprune-checkpoint", "version": 1,
     "spec": ModelSpec.to_dict(),              # how to build the unpruned zoo model
     "shapes": {module_name: [...]} | None,   # per-layer widths after pruning (None: unpruned)
     "state_dict": {...}, "meta": {...}}

so it loads with ``torch.load(weights_only=True)``: no arbitrary object is ever unpickled. A
pruned model is rebuilt by constructing the zoo model, resizing its conv/BN/linear layers to the
stored widths (:func:`apply_shapes`), then loading the state dict strictly.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.errors import CheckpointError, RlpruneError
from rlprune.models import ModelSpec, is_channels_last, set_layout

__all__ = [
    "FORMAT",
    "apply_shapes",
    "atomic_write",
    "capture_shapes",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "unpickling_refusal",
]

FORMAT = "rlprune-checkpoint"
VERSION = 1


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write a file via a temp file in the same directory + fsync + rename.

    A crash at any moment leaves either the old file or the new one, never a partial file.

    Raises:
        RlpruneError: the directory is missing, read-only or full (one clear line).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise RlpruneError(f"cannot write {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise RlpruneError(f"cannot write {path}: {e.strerror}") from e
        raise
    return path


def unpickling_refusal(e: pickle.UnpicklingError) -> tuple[bool, str]:
    """``(unsafe, reason)`` from a ``torch.load(weights_only=True)`` failure.

    torch's message runs to a page, carries ANSI escapes and suggests ``weights_only=False``
    (the unsafe way out); the one useful sentence follows ``WeightsUnpickler error:``.
    ``unsafe`` is True when the file asks for a global (code) rather than being garbled.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    _, marker, tail = text.partition("WeightsUnpickler error:")
    reason = " ".join((tail if marker else text).split())
    for cut in (" Please use", " Check the documentation"):
        reason = reason.split(cut)[0]
    reason = reason.rstrip(". ")[:200] or type(e).__name__
    return "global" in reason.lower(), reason


def capture_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Widths of every conv ``[out, in, groups]``, BN ``[features]`` and linear ``[out, in]``."""
    shapes: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = [m.out_channels, m.in_channels, m.groups]
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = [m.num_features]
        elif isinstance(m, nn.Linear):
            shapes[name] = [m.out_features, m.in_features]
    return shapes


def _resize(m: nn.Module, name: str, shape: list[int]) -> None:
    def param(t: torch.Tensor | None, *size: int) -> nn.Parameter | None:
        return None if t is None else nn.Parameter(torch.empty(size, dtype=t.dtype))

    if isinstance(m, nn.Conv2d) and len(shape) == 3:
        out, cin, groups = shape
        if out <= 0 or cin <= 0 or groups <= 0 or cin % groups or out % groups:
            raise CheckpointError(f"invalid conv shape {shape} for {name}")
        m.out_channels, m.in_channels, m.groups = out, cin, groups
        m.weight = param(m.weight, out, cin // groups, *m.kernel_size)  # type: ignore[assignment]
        if m.bias is not None:
            m.bias = param(m.bias, out)
    elif isinstance(m, nn.BatchNorm2d) and len(shape) == 1:
        (c,) = shape
        m.num_features = c
        if m.affine:
            m.weight = param(m.weight, c)  # type: ignore[assignment]
            m.bias = param(m.bias, c)  # type: ignore[assignment]
        if m.track_running_stats:
            m.running_mean = torch.zeros(c)
            m.running_var = torch.ones(c)
    elif isinstance(m, nn.Linear) and len(shape) == 2:
        out, cin = shape
        m.out_features, m.in_features = out, cin
        m.weight = param(m.weight, out, cin)  # type: ignore[assignment]
        if m.bias is not None:
            m.bias = param(m.bias, out)  # type: ignore[assignment]
    else:
        raise CheckpointError(
            f"stored shape {shape} does not fit layer {name} ({type(m).__name__})"
        )


def apply_shapes(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Resize ``model``'s layers in place to the widths recorded by :func:`capture_shapes`.

    Works for any model with the same module names (zoo or a user's own), so a pruned model
    can be rebuilt from its unpruned architecture. Values are uninitialised until a state dict
    is loaded. The model keeps its memory layout (NHWC stays NHWC).
    """
    nhwc = is_channels_last(model)
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        if name not in modules:
            raise CheckpointError(f"pruned file names layer {name!r}, which the model lacks")
        _resize(modules[name], name, [int(s) for s in shape])
    return set_layout(model, True) if nhwc else model


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    spec: ModelSpec | None,
    meta: dict[str, Any] | None = None,
    pruned: bool = False,
) -> Path:
    """Atomically save ``model`` (state dict + spec + widths when ``pruned``)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict() if spec is not None else None,
        "shapes": capture_shapes(model) if pruned else None,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint dict with ``weights_only=True``.

    Raises:
        CheckpointError: missing, unreadable, a pickle that needs arbitrary code, truncated,
            or not an rlprune checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe, reason = unpickling_refusal(e)
        if unsafe:
            raise CheckpointError(
                f"{path} is not a safe rlprune checkpoint (refused to unpickle: {reason})"
            ) from e
        raise CheckpointError(f"{path} is not a readable checkpoint (bad pickle: {reason})") from e
    except Exception as e:  # torch raises RuntimeError/EOFError/... for corrupt zips
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rlprune checkpoint (no '{FORMAT}' header)")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {obj.get('version')!r}")
    if not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{path}: checkpoint has no state dict")
    for key in ("spec", "meta"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise CheckpointError(f"{path}: '{key}' must be a mapping")
    shapes = obj.get("shapes")
    if shapes is not None and not (
        isinstance(shapes, dict)
        and all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and all(type(s) is int for s in v)
            for k, v in shapes.items()
        )
    ):
        raise CheckpointError(f"{path}: 'shapes' must map layer names to lists of integers")
    return obj


def _check_shrinks(model: nn.Module, shapes: dict[str, list[int]], path: Path) -> None:
    """A pruned file only ever narrows layers: refuse widths beyond the unpruned model's.

    Stops a crafted file from making :func:`apply_shapes` allocate absurd tensors.
    """
    current = capture_shapes(model)
    for name, shape in shapes.items():
        ref = current.get(name)
        if ref is None:
            continue  # apply_shapes names the unknown layer
        if len(shape) != len(ref) or any(s > r for s, r in zip(shape[:2], ref[:2], strict=False)):
            raise CheckpointError(
                f"{path}: stored shape {list(shape)} of layer {name} exceeds the "
                f"architecture's {ref}"
            )


def load_model(
    path: str | Path, model: nn.Module | None = None
) -> tuple[nn.Module, ModelSpec | None, dict[str, Any]]:
    """Rebuild the model stored in ``path`` (baseline or pruned) in eval mode.

    Args:
        path: an rlprune checkpoint or pruned-model file.
        model: for users' own architectures (no zoo spec), an unpruned instance to fill.

    Returns:
        ``(model, spec, meta)``.
    """
    ckpt = load_checkpoint(path)
    spec = ModelSpec.from_dict(ckpt["spec"]) if ckpt.get("spec") else None
    if model is None:
        if spec is None:
            raise CheckpointError(f"{path} holds a custom model: pass an instance to load it")
        model = spec.build()
    if ckpt.get("shapes"):
        _check_shrinks(model, ckpt["shapes"], Path(path))
        apply_shapes(model, ckpt["shapes"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        arch = f"the {spec.name} architecture" if spec is not None else "the model architecture"
        raise CheckpointError(
            f"{path} does not match {arch}: {_mismatch(model, ckpt['state_dict'], e)}"
        ) from e
    model.eval()
    return model, spec, dict(ckpt.get("meta") or {})


def _mismatch(model: nn.Module, state: dict[str, Any], err: Exception) -> str:
    """One line saying how a state dict differs from ``model`` (torch's message runs long)."""
    have = model.state_dict()
    missing = [k for k in have if k not in state]
    unexpected = [k for k in state if k not in have]
    resized = [
        k
        for k in have
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != have[k].shape
    ]
    parts = [
        f"{len(keys)} {what} (e.g. {keys[0]!r})"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("tensors of another shape", resized),
        )
        if keys
    ]
    if parts:
        return "; ".join(parts)
    lines = str(err).strip().splitlines()
    return lines[-1].strip() if lines else type(err).__name__
