"""Command-line pieces the latency bench scripts share: the model choice and
``--steady-malloc``, which must take effect once, before anything is allocated or timed."""

from __future__ import annotations

import argparse

from rlprune.machine import steady_malloc

MODELS = ("vgg-small", "resnet20")


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
