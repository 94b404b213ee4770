"""The layer calls of one forward: their shapes, and their times inside the whole model.

A layer timed alone (the latency table's probe grid) reuses one input and one output buffer
and runs with its caches to itself. Inside the model each output is a fresh block from the
allocator (glibc serves multi-MB blocks with ``mmap``: zeroed pages, page faults) and each
input was just written by another kernel. Measured on resnet20 at batch 64 (2-core AMD EPYC,
1 thread, CPU clock, glibc's default malloc; docs/LATENCY.md), its layers added up to 62.1 ms
inside a 62.0 ms forward and to 42.5 ms alone (BatchNorm 10.6 against 3.0 ms).
:func:`with_extras` measures that difference per layer with every unit cut alike and stores it
in the table's terms, so the sum over layers describes the model as it runs (the whole-model
fit then only has the glue between modules to absorb). The hooks' own cost (microseconds per
call) is counted in the model's times: the fit absorbs it with the glue.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from torch import nn

from rlprune.models import is_channels_last
from rlprune.pruning.clock import Clock, clock_reader
from rlprune.pruning.latency import LayerTerm, uniform_counts

__all__ = ["LayerCall", "in_model_ms", "layer_calls", "with_extras"]


class LayerCall(NamedTuple):
    """One leaf-module call of a forward: ``label`` (``module``, or ``module#k`` for its k-th
    call), the module's name, and the input and output shapes (``[1, C, ...]``)."""

    label: str
    module: str
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]


def _hook_leaves(model: nn.Module, pre: Any, post: Any) -> list[Any]:
    """Hooks on every leaf module: ``pre(name)`` before and ``post(name, args, result)`` after
    its call, for calls with one tensor input and one tensor output."""
    hooks = []
    for name, mod in model.named_modules():
        if name and not any(True for _ in mod.children()):

            def before(m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                pre(name)

            def after(m: nn.Module, args: tuple[Any, ...], res: Any, name: str = name) -> None:
                one = len(args) == 1 and isinstance(args[0], torch.Tensor)
                if one and isinstance(res, torch.Tensor):
                    post(name, args, res)

            hooks += [mod.register_forward_pre_hook(before), mod.register_forward_hook(after)]
    return hooks


def _label(seen: dict[str, int], name: str) -> str:
    """``name``, or ``name#k`` for the k-th call of a module called more than once."""
    seen[name] = seen.get(name, 0) + 1
    return name if seen[name] == 1 else f"{name}#{seen[name]}"


def layer_calls(model: nn.Module, example: torch.Tensor) -> list[LayerCall]:
    """Every leaf-module call of one forward (batch 1) with a single tensor input and output,
    labelled as the table's terms are."""
    out: list[LayerCall] = []
    seen: dict[str, int] = {}

    def post(name: str, args: tuple[Any, ...], res: Any) -> None:
        out.append(LayerCall(_label(seen, name), name, tuple(args[0].shape), tuple(res.shape)))

    hooks: list[Any] = []
    try:
        hooks = _hook_leaves(model, lambda name: None, post)
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return out


@torch.inference_mode()
def in_model_ms(model: nn.Module, example: torch.Tensor, batch: int, threads: int, runs: int,
                clock: Clock = "wall") -> dict[str, float]:  # fmt: skip
    """Per call label: median ms of that call inside ``runs`` whole forwards at ``batch``
    (after ``max(2, runs // 4)`` warm-up forwards), in the model's memory layout."""
    now = clock_reader(clock)
    start: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    seen: dict[str, int] = {}

    def pre(name: str) -> None:
        start[name] = now()

    def post(name: str, args: tuple[Any, ...], res: Any) -> None:
        times.setdefault(_label(seen, name), []).append((now() - start[name]) * 1e3)

    fmt = torch.channels_last if is_channels_last(model) else torch.contiguous_format
    x = example[:1].expand(batch, *example.shape[1:]).contiguous(memory_format=fmt)
    old = torch.get_num_threads()
    hooks: list[Any] = []
    try:
        torch.set_num_threads(threads)
        hooks = _hook_leaves(model.eval(), pre, post)
        for i in range(max(2, runs // 4) + runs):
            if i == max(2, runs // 4):
                times.clear()
            seen.clear()
            model(x)
    finally:
        torch.set_num_threads(old)
        for h in hooks:
            h.remove()
    return {k: statistics.median(v) for k, v in times.items()}


def with_extras(terms: list[LayerTerm], cuts: Mapping[float, nn.Module], example: torch.Tensor,
                batch: int, threads: int, runs: int, clock: Clock,
                full: Mapping[str, int]) -> list[LayerTerm]:  # fmt: skip
    """``terms`` with their in-model extras: for each uniform cut (keep fraction -> model with
    every unit at ``round(fraction * C)`` channels), the call's time inside that model minus
    the term's prediction alone, at the width that the term's cost follows."""
    points: dict[str, dict[float, list[float]]] = {t.name: {} for t in terms}
    for frac, cut in cuts.items():
        inside = in_model_ms(cut, example, batch, threads, runs, clock)
        counts = uniform_counts(full, frac)
        for t in terms:
            if t.name in inside:
                a, b = t.widths(counts, full)
                extra = inside[t.name] - t.predict(a, b)
                points[t.name].setdefault(t.extra_width(a, b), []).append(extra)
    return [
        replace(t, extra=tuple((w, statistics.fmean(e)) for w, e in sorted(points[t.name].items())))
        for t in terms
    ]
