"""Which folder a command may write into: run folders carry an identity marker.

A ``train`` or ``prune`` run writes ``rlprune-run.json`` when it creates its folder::

    {"format": "rlprune-run", "version": 1, "command": "prune",
     "config": "<sha256 of the resolved config>",
     "checkpoint": "<fingerprint of the input model's weights>" | null,
     "dataset": "<fingerprint of the dataset's tensors>"}

:func:`claim` decides, before anything is written, whether a command may use a folder: a new
or empty folder is claimed; ``--resume`` continues a run only when config, checkpoint and
dataset all match; ``--overwrite`` replaces an earlier run of the same command (only rlprune's
own files are removed); a folder that is not a run folder is never written into, and ``train``
and ``prune`` refuse each other's folders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rlprune.checkpoint import atomic_write
from rlprune.config_load import config_to_dict
from rlprune.errors import RlpruneError

__all__ = ["MARKER", "RunIdentity", "claim", "config_hash", "tensors_fingerprint"]

log = logging.getLogger(__name__)

MARKER = "rlprune-run.json"
_FORMAT, _VERSION = "rlprune-run", 1

# What rlprune itself writes in a run folder: --overwrite removes these and nothing else.
_OUTPUTS = {
    "train": ("model.pt",),
    "prune": (
        "config.yaml", "metrics.jsonl", "report.json", "report.md", "model.pt", "model.pt2",
        "model.onnx", "reward_curves.png", "filters.png", "keep_ratio.png", "walk.png", "state",
    ),
}  # fmt: skip
# Entries that do not make a folder "started": the marker, an empty state/, temp files.
_UNSTARTED = {MARKER, "state"}


def tensors_fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """BLAKE2b of names, dtypes, shapes and bytes: equal exactly when the tensors are equal."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in named:
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{flat.dtype}|{tuple(t.shape)};".encode())
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def config_hash(cfg: Any, **extra: Any) -> str:
    """SHA-256 of a config dataclass (plus ``extra`` fields) in canonical JSON."""
    data = {**config_to_dict(cfg), **extra}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """What a run folder was made by and from (compared on ``--resume``)."""

    command: str  # "train" | "prune"
    config: str
    checkpoint: str | None  # the input model's weights (prune)
    dataset: str | None

    def differences(self, other: RunIdentity) -> list[str]:
        """Names of what differs from ``other`` (a field unknown on either side is skipped)."""
        labels = {"config": "config", "checkpoint": "input checkpoint", "dataset": "dataset"}
        return [
            label
            for key, label in labels.items()
            if getattr(self, key) is not None
            and getattr(other, key) is not None
            and getattr(self, key) != getattr(other, key)
        ]

    def write(self, root: Path) -> None:
        text = json.dumps({"format": _FORMAT, "version": _VERSION, **asdict(self)}, indent=2)
        atomic_write(root / MARKER, lambda f: f.write(text), mode="w")


def _read_marker(root: Path) -> RunIdentity | None:
    """The folder's identity, None without a marker; a garbled marker is one clear error."""
    path = root / MARKER
    if path.is_symlink():
        raise RlpruneError(f"{path} is a symbolic link; rlprune does not follow links")
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read(1 << 16))
        if raw.get("format") != _FORMAT or raw.get("version") != _VERSION:
            raise ValueError("not an rlprune run marker")
        ident = RunIdentity(raw["command"], raw["config"], raw["checkpoint"], raw["dataset"])
        if ident.command not in _OUTPUTS:
            raise ValueError(f"unknown command {ident.command[:20]!r}")
        return ident
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RlpruneError(
            f"{path} is unreadable or corrupt ({type(e).__name__}); choose a new --out"
        ) from e


def _started(root: Path, entries: list[str]) -> bool:
    """Whether the folder holds anything beyond an unstarted run's marker and empty state/."""
    for name in entries:
        if name.startswith(".") and name.endswith(".tmp"):
            continue  # a killed atomic write
        if name not in _UNSTARTED:
            return True
        p = root / name
        if name == "state" and (p.is_symlink() or not p.is_dir() or any(p.iterdir())):
            return True
    return False


def _clear(root: Path, command: str) -> None:
    """Remove rlprune's own outputs of an earlier run (links are removed, never followed)."""
    log.info("--overwrite: removing the earlier %s run's files in %s", command, root)
    for name in (*_OUTPUTS[command], MARKER):
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.is_symlink() or p.exists():
            p.unlink()
    for tmp in root.glob(".*.tmp"):
        tmp.unlink()


def claim(root: Path, identity: RunIdentity, resume: bool, overwrite: bool) -> bool:
    """Check that ``identity``'s command may use ``root``; returns True when resuming.

    A fresh claim creates ``root`` and writes the marker; ``overwrite`` first removes an
    earlier run's outputs. Nothing is written before every check has passed.

    Raises:
        RlpruneError: one line naming the reason (not a run folder, the other command's run,
            a run without --resume/--overwrite, a resume with other inputs, unwritable).
    """
    cmd = identity.command
    if root.exists() and not root.is_dir():
        raise RlpruneError(f"{root} is a file, not a folder; choose another --out")
    try:
        entries = sorted(e.name for e in root.iterdir()) if root.is_dir() else []
    except OSError as e:
        raise RlpruneError(f"cannot read {root}: {e.strerror or e}") from e
    stored = _read_marker(root)
    legacy = stored is None and cmd == "prune" and (root / "config.yaml").is_file()
    if stored is not None and stored.command != cmd:
        raise RlpruneError(
            f"{root} holds an rlprune {stored.command} run; `rlprune {cmd}` needs its own "
            "folder: choose another --out"
        )
    if not _started(root, entries):
        return _fresh(root, identity)
    if stored is None and not legacy:
        raise RlpruneError(
            f"{root} is not empty and is not an rlprune run folder; rlprune never writes into "
            "it: choose a new or empty --out"
        )
    if resume and cmd == "prune":
        if stored is None:  # left unmarked: its config is still compared on start
            log.warning("%s has no %s (an older run): its inputs cannot be checked", root, MARKER)
            return True
        diffs = stored.differences(identity)
        if diffs:
            raise RlpruneError(
                f"{root} was started with a different {' and '.join(diffs)}; resume with the "
                "same config, checkpoint and dataset, or choose a new --out"
            )
        return True
    if overwrite:
        _clear(root, cmd)
        return _fresh(root, identity)
    again = "--resume to continue it, " if cmd == "prune" else ""
    raise RlpruneError(
        f"{root} already holds an rlprune {cmd} run: pass {again}--overwrite to replace it, "
        "or choose a new --out"
    )


def _fresh(root: Path, identity: RunIdentity) -> bool:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RlpruneError(f"cannot create run folder {root}: {e.strerror or e}") from e
    identity.write(root)
    return False
