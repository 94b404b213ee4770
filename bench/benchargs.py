"""What the latency bench scripts share: the model choice, ``--steady-malloc`` (which must take
effect once, before anything is allocated or timed) and loading the benchmark checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from rlprune.checkpoint import load_model
from rlprune.machine import steady_malloc
from rlprune.models import set_layout

MODELS = ("vgg-small", "resnet20")
BASE = Path(__file__).resolve().parents[1] / "docs" / "results" / "base"


def parser(doc: str | None, model: str = "vgg-small") -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line, with ``--model`` and ``--steady-malloc``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    p.add_argument("--model", default=model, choices=MODELS)
    p.add_argument("--steady-malloc", action="store_true",
                   help="keep large blocks on glibc's heap (rlprune.machine.steady_malloc)")  # fmt: skip
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """``p.parse_args()``, with the allocator set as asked (one-line exit where it cannot be)."""
    args = p.parse_args()
    if getattr(args, "steady_malloc", False) and not steady_malloc():
        raise SystemExit("--steady-malloc: no glibc mallopt here")
    return args


def base_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The benchmark checkpoint ``docs/results/base/{name}.pt`` in NHWC and eval mode, and its
    example input ``[1, C, H, W]``."""
    model, spec, _ = load_model(BASE / f"{name}.pt")
    assert spec is not None, f"{name}.pt has no model spec"
    return set_layout(model, True).eval(), spec.example_input()
