"""Helpers of :mod:`rlprune.cli`: data sources, devices, output checks and error lines."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from rlprune.distributed import resolve_device
from rlprune.errors import DataError, RlpruneError

__all__ = [
    "DataSource",
    "check_fit",
    "check_writable",
    "device",
    "interrupted_line",
    "load_data",
    "one_line",
    "yaml_scalar",
]


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Which data a command loads (the ``--dataset`` family of options)."""

    dataset: str
    data_dir: str | None = None
    download: bool = False
    max_train: int | None = None
    max_mb: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DataSource:
        return cls(args.dataset, args.data_dir, args.download, args.max_train, args.data_max_mb)


def load_data(source: DataSource, seed: int = 0, spec: Any = None) -> Any:
    """The dataset; image folders are resized to ``spec``'s input size when there is one."""
    from rlprune.data import load_dataset

    return load_dataset(
        source.dataset,
        data_dir=source.data_dir,
        download=source.download,
        seed=seed,
        max_train=source.max_train,
        max_mb=source.max_mb,
        input_size=None if spec is None else spec.input_size,
    )


def device(name: str) -> torch.device:
    """``--device`` as a device, or one clear error (torch's own message is a traceback)."""
    try:
        return resolve_device(name)
    except RuntimeError:
        raise RlpruneError(
            f"unknown --device {name[:40]!r}; use cpu, cuda, cuda:N or auto"
        ) from None


def check_fit(spec: Any, data: Any) -> None:
    if spec is None:
        return
    if spec.in_channels != data.in_channels or spec.num_classes != data.num_classes:
        raise DataError(
            f"the checkpoint's model expects {spec.in_channels}-channel input and "
            f"{spec.num_classes} classes; dataset {data.name} has {data.in_channels} channel(s) "
            f"and {data.num_classes} classes"
        )


def yaml_scalar(value: Any) -> str:
    """``value`` as a YAML scalar for ``--set``: ``str(1e-05)`` would load as a string."""
    return yaml.safe_dump(value).splitlines()[0]


def check_writable(folder: Path) -> None:
    """Create ``folder`` and probe that a file can be written there (one clear error if not)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise RlpruneError(f"cannot write to {folder}: {e.strerror or e}") from e


def one_line(text: str) -> str:
    """An error message on one line (a message may quote a multi-line library error)."""
    return " ".join(text.split())[:2000]


def interrupted_line(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind: a search and a comparison keep their progress."""
    if args.command == "prune":
        return (
            f"rlprune: interrupted; progress is saved in {args.out} — rerun the same command "
            "with --resume to continue"
        )
    if args.command == "demo":
        return "rlprune: interrupted; progress is saved — rerun `rlprune demo` to continue"
    if args.command == "compare":
        return (
            f"rlprune: interrupted; finished cells are saved in {args.out} — rerun the same "
            "command to continue"
        )
    return "rlprune: interrupted"
