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
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from rlprune.errors import CheckpointError, RlpruneError, short_repr
from rlprune.models import ModelSpec, is_channels_last, set_layout
from rlprune.safefs import refuse_link

__all__ = [
    "FORMAT",
    "apply_shapes",
    "atomic_write",
    "capture_shapes",
    "load_checkpoint",
    "check_shrinks",
    "load_model",
    "refusal_message",
    "save_checkpoint",
    "unpickling_refusal",
]

FORMAT = "rlprune-checkpoint"
VERSION = 1


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write a file via a temp file in the same directory + fsync + rename.

    A crash at any moment leaves either the old file or the new one, never a partial file. A
    symbolic link in the file's place (or as its folder) is refused, never written through.

    Raises:
        RlpruneError: the directory is missing, read-only or full (one clear line), or a link
            stands where the file goes.
    """
    path = Path(path)
    refuse_link(path)
    handling = sys.exc_info()[1]  # a save inside an ``except KeyboardInterrupt:`` block
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
        os.replace(tmp, path)  # replaces a link planted meanwhile, never its target
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        interrupt = _in_chain(e, KeyboardInterrupt)
        if interrupt is not None and interrupt is not e and interrupt is not handling:
            # Ctrl-C inside torch.save: its zip writer's cleanup raises "unexpected pos" on top
            # of the KeyboardInterrupt, which must still reach the CLI (exit 130, resumable)
            raise interrupt from None
        if isinstance(e, OSError):
            raise RlpruneError(f"cannot write {path}: {e.strerror or e}") from e
        cause = _in_chain(e, OSError)
        if isinstance(e, RuntimeError) and (cause is not None or "write" in str(e).lower()):
            # torch.save reports a full disk as a RuntimeError ("file write failed", or an
            # "unexpected pos" raised while an OSError is being handled)
            why = cause.strerror if cause is not None and cause.strerror else _first_line(e)
            raise RlpruneError(f"cannot write {path}: {why} (is the disk full?)") from e
        raise
    return path


_E = TypeVar("_E", bound=BaseException)


def _in_chain(e: BaseException, kind: type[_E]) -> _E | None:
    """The first ``kind`` in ``e``'s chain of causes (``e`` itself first), if any."""
    seen: BaseException | None = e
    for _ in range(10):
        if seen is None or isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def unpickling_refusal(e: pickle.UnpicklingError) -> tuple[bool, str]:
    """``(holds_code, reason)`` from a ``torch.load(weights_only=True)`` failure.

    ``holds_code`` is True when the pickle asks to import a global (a function or class: code)
    rather than being garbled; ``reason`` then names that global. torch's own message runs to a
    page and suggests ``weights_only=False``, the unsafe way out: none of it is passed on.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"GLOBAL ([\w.<>]+)", text)
    if found:
        return True, f"it asks to import {found.group(1)[:100]}"
    _, marker, tail = text.partition("WeightsUnpickler error:")
    reason = " ".join((tail if marker else "").split())
    for cut in (" Please", " Check the documentation"):
        reason = reason.split(cut)[0]
    return False, reason.rstrip(". ")[:200] or "not a valid pickle"


def refusal_message(path: str | Path, e: pickle.UnpicklingError, what: str) -> str:
    """One line for an unpickling failure of ``path`` (``what``: "checkpoint", "state file").

    A file that holds code is named as such: it was refused, and nothing in it ran.
    """
    holds_code, reason = unpickling_refusal(e)
    if holds_code:
        return (
            f"{path} holds code ({reason}) and was refused: an rlprune {what} holds only "
            "tensors and plain values, and rlprune never runs code from a file"
        )
    return f"{path} is not a readable {what} (corrupt pickle: {reason})"


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
        raise CheckpointError(refusal_message(path, e, "checkpoint")) from e
    except Exception as e:  # torch raises RuntimeError/EOFError/... for corrupt zips
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rlprune checkpoint (no '{FORMAT}' header)")
    if obj.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint version {short_repr(obj.get('version'))}"
        )
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


def check_shrinks(model: nn.Module, shapes: dict[str, list[int]], path: str | Path) -> None:
    """A pruned file only ever narrows layers: refuse widths beyond the unpruned model's.

    Stops a crafted checkpoint or state file from making :func:`apply_shapes` allocate absurd
    tensors.
    """
    current = capture_shapes(model)
    for name, shape in shapes.items():
        ref = current.get(name)
        if ref is None:
            continue  # apply_shapes names the unknown layer
        if len(shape) != len(ref) or any(s > r for s, r in zip(shape[:2], ref[:2], strict=False)):
            raise CheckpointError(
                f"{path}: stored shape {short_repr(list(shape))} of layer {name[:80]} exceeds "
                f"the architecture's {ref}"
            )


# Bounds of a stored zoo spec, checked before anything is built from it.
MAX_CLASSES = 100_000
MAX_INPUT_SIDE = 1024


def _spec(raw: dict[str, Any], path: Path) -> ModelSpec:
    """The checkpoint's spec, its fields type- and range-checked before anything is built."""
    size = raw.get("input_size")
    ints = {k: raw.get(k) for k in ("in_channels", "num_classes")}
    sizes_ok = isinstance(size, (list, tuple)) and len(size) == 2
    if not (
        isinstance(raw.get("name"), str)
        and all(type(v) is int for v in ints.values())
        and sizes_ok
        and all(type(v) is int for v in size)  # type: ignore[union-attr]
        and isinstance(raw.get("width", 1.0), (int, float))
    ):
        raise CheckpointError(f"{path}: invalid model spec {short_repr(raw)}")
    if not 2 <= raw["num_classes"] <= MAX_CLASSES:
        raise CheckpointError(f"{path}: spec num_classes must be in 2..{MAX_CLASSES}")
    if not all(8 <= v <= MAX_INPUT_SIDE for v in size):  # type: ignore[union-attr]
        raise CheckpointError(f"{path}: spec input_size must be in 8..{MAX_INPUT_SIDE} per side")
    try:
        return ModelSpec.from_dict(raw)
    except RlpruneError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _fits(model: nn.Module, ckpt: dict[str, Any], path: Path, arch: str) -> None:
    """Refuse a state dict whose keys or shapes differ from ``model`` (built on ``meta``)."""
    state = ckpt["state_dict"]
    have = model.state_dict()
    if set(have) != set(state) or any(
        not isinstance(state[k], torch.Tensor) or state[k].shape != have[k].shape for k in have
    ):
        raise CheckpointError(f"{path} does not match {arch}: {_mismatch(model, state, None)}")


def load_model(
    path: str | Path, model: nn.Module | None = None
) -> tuple[nn.Module, ModelSpec | None, dict[str, Any]]:
    """Rebuild the model stored in ``path`` (baseline or pruned) in eval mode.

    A zoo model is first built on the ``meta`` device (no memory) and its shapes compared with
    the stored tensors: a file whose spec claims a huge model is refused before any allocation.

    Args:
        path: an rlprune checkpoint or pruned-model file.
        model: for users' own architectures (no zoo spec), an unpruned instance to fill.

    Returns:
        ``(model, spec, meta)``.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    spec = _spec(ckpt["spec"], path) if ckpt.get("spec") else None
    arch = f"the {spec.name} architecture" if spec is not None else "the model architecture"
    if model is None:
        if spec is None:
            raise CheckpointError(f"{path} holds a custom model: pass an instance to load it")
        with torch.device("meta"):
            skeleton = spec.build()
            if ckpt.get("shapes"):
                check_shrinks(skeleton, ckpt["shapes"], path)
                apply_shapes(skeleton, ckpt["shapes"])
        _fits(skeleton, ckpt, path, arch)
        model = spec.build()
    if ckpt.get("shapes"):
        check_shrinks(model, ckpt["shapes"], path)
        apply_shapes(model, ckpt["shapes"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not match {arch}: {_mismatch(model, ckpt['state_dict'], e)}"
        ) from e
    model.eval()
    return model, spec, dict(ckpt.get("meta") or {})


def _mismatch(model: nn.Module, state: dict[str, Any], err: Exception | None) -> str:
    """One line saying how a state dict differs from ``model`` (torch's message runs long)."""
    have = model.state_dict()
    missing = [k for k in have if k not in state]
    unexpected = [k for k in state if k not in have]
    resized = [
        k
        for k in have
        if k in state
        and (not isinstance(state[k], torch.Tensor) or state[k].shape != have[k].shape)
    ]
    parts = [
        f"{len(keys)} {what} (e.g. {short_repr(keys[0])})"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("tensors of another shape", resized),
        )
        if keys
    ]
    if parts:
        return "; ".join(parts)
    lines = str(err).strip().splitlines() if err is not None else []
    return lines[-1].strip()[:200] if lines else "the stored tensors differ"
