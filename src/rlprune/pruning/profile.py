"""Measuring a latency table (:class:`~rlprune.pruning.latency.LatencyLUT`) on this machine.

1. Every leaf-module call of the forward is recorded with its input and output shapes. Which
   units' channels reach each call is found as :class:`~rlprune.pruning.UnitMacs` finds it:
   one channel of a unit is removed on a copy (torch-pruning) and the changed widths give the
   slopes (a concat or a grouped conv loses several channels per unit channel).
2. Each call that a unit touches is rebuilt at a grid of probe widths (NetAdapt's per-layer
   tables, Yang et al., ECCV 2018) and timed alone on an input of its shape, in the model's
   memory layout: a conv or linear layer over (input width x output width), per-channel layers
   (BN, ReLU, pooling, a depthwise conv) over their one width.
3. The whole model is timed in the deployed runtime (eager torch, the ``torch.export``
   program, or ONNX Runtime) at full width and with every unit cut to a few uniform fractions;
   ``offset + scale * sum(per-layer)`` is fitted to those measurements (least squares). The
   cut models are timed in rounds (every cut in turn) spread over the grid's timings, so a
   slow stretch of a shared machine falls on every cut alike, and the fit sees the machine's
   usual speed rather than one moment's.
   With ``layers="in-model"`` (eager torch only) every layer call is also timed inside each
   cut model, and its difference from the layer's grid is added to the layer's term
   (:func:`~rlprune.pruning.calls.with_extras`) before the fit.

Per-layer tables are timed in eager torch for every runtime; the runtime enters through the
whole-model calibration (and the measured latencies the report compares predictions with).
Every timing reads one clock (:data:`~rlprune.pruning.clock.Clock`): wall time by default, or
the calling thread's CPU time (1 thread only), which leaves out time the core spent elsewhere.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from rlprune.errors import ConfigError, PruningError
from rlprune.machine import cpu_summary, malloc_mode
from rlprune.models import is_channels_last, set_layout
from rlprune.pruning.calls import LayerCall, layer_calls, with_extras
from rlprune.pruning.clock import Clock, check_clock
from rlprune.pruning.importance import filter_l1
from rlprune.pruning.latency import (
    LatencyLUT,
    LatencyTable,
    LayerTerm,
    LayerTiming,
    Runtime,
    uniform_counts,
)
from rlprune.pruning.surgery import remove_channels
from rlprune.pruning.timing import RoundTimer, on_cuda, timed_at_least
from rlprune.pruning.units import Unit
from rlprune.pruning.verify import find_units

__all__ = ["PROBES", "STEP", "STEP_BATCH1", "cpu_info", "profile_latency", "uniform_cut"]

log = logging.getLogger(__name__)

PROBES = (0.125, 0.25, 0.5, 0.75, 1.0)  # keep fractions of each probed width
# Output-width step of the grid at batch 1 and above it. At batch 1 the channels left over
# from a block of 8 cost by their binary digits (4, 2, 1: 44 outputs as fast as 42, slower
# than 40, faster than 43, on an AVX-512 EPYC), which no interpolation between 8j + 1 and
# 8j + 7 follows, so every width is probed; there a layer call takes microseconds. Measured
# at batch 1 and 64 only (docs/LATENCY.md).
STEP_BATCH1, STEP = 1, 8
CALIBRATION = (1.0, 0.75, 0.5, 0.25)  # uniform keep fractions of the whole-model fit
# with in-model extras, the cuts also give each layer's extra curve its points: one per 1/8
CALIBRATION_IN_MODEL = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)
# Timings shorter than this many ms get more calls (at most 100 x runs): at batch 1 ten calls
# of a small layer last well under a millisecond, and one slow stretch then moves the median.
PROBE_MS = 5.0  # a grid probe (a whole model in a round: timing.ROUND_MS)
CALIBRATION_ROUNDS = 5  # rounds over the calibration cuts (median per cut)
_CHANNELWISE = (nn.BatchNorm2d, nn.BatchNorm1d)


def _slopes(
    model: nn.Module, units: list[Unit], example: torch.Tensor, base: list[LayerCall]
) -> list[tuple[dict[str, float], dict[str, float]]]:
    """Per call: ``(input slopes, output slopes)``, channels lost per removed unit channel."""
    slopes: list[tuple[dict[str, float], dict[str, float]]] = [({}, {}) for _ in base]
    for u in units:
        if u.channels < 2:
            continue
        probe = copy.deepcopy(model)
        mask = torch.ones(u.channels)
        mask[0] = 0
        remove_channels(probe, u, mask, example, min_keep=1)
        calls = layer_calls(probe, example)
        if [c.label for c in calls] != [c.label for c in base]:
            raise PruningError(f"{u.name}: the forward calls other layers once the unit is cut")
        for (_, _, si, so), (_, _, pi, po), (a, b) in zip(base, calls, slopes, strict=True):
            if len(si) > 1 and si[1] != pi[1]:
                a[u.name] = float(si[1] - pi[1])
            if len(so) > 1 and so[1] != po[1]:
                b[u.name] = float(so[1] - po[1])
    return slopes


def _layer(mod: nn.Module, a: int, b: int) -> nn.Module | None:
    """``mod`` rebuilt with ``a`` input and ``b`` output channels (None: cannot be rebuilt)."""
    if isinstance(mod, nn.Conv2d):
        depthwise = mod.groups == mod.in_channels == mod.out_channels
        g = a if depthwise else mod.groups
        a, b = (a, a) if depthwise else (max(g, a - a % g), max(g, b - b % g))
        return nn.Conv2d(a, b, mod.kernel_size, mod.stride, mod.padding, mod.dilation, g,  # type: ignore[arg-type]
                         mod.bias is not None, mod.padding_mode)  # fmt: skip
    if isinstance(mod, nn.Linear):
        return nn.Linear(a, b, mod.bias is not None)
    if isinstance(mod, _CHANNELWISE):
        return type(mod)(a)
    if not any(True for _ in mod.parameters()):
        return copy.deepcopy(mod)  # ReLU, pooling, dropout, flatten: any width
    return None


def _channelwise(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Conv2d):
        return mod.groups == mod.in_channels == mod.out_channels
    return not isinstance(mod, nn.Linear)


def _grid(full: int, slopes: dict[str, float], probes: Sequence[float]) -> tuple[int, ...]:
    """Input widths: the probe fractions of ``full`` (kernels are about linear in them)."""
    if not slopes:
        return (full,)
    return tuple(sorted({max(1, round(full * p)) for p in probes} | {full}))


def _step_grid(full: int, slopes: dict[str, float], step: int) -> tuple[int, ...]:
    """Output widths: every multiple of ``step`` and the widths one below and one above it.
    CPU kernels compute output channels in vector blocks (16 fp32 lanes with AVX-512), so their
    time is a staircase in the output width, and some widths off a block edge take a slower
    kernel altogether (at batch 1 on an AVX-512 EPYC, a 3x3 conv ran 61% slower with 47 outputs
    than with 48, and not slower with 95 than with 96: docs/LATENCY.md). Interpolation thus
    runs between ``step * j + 1`` and ``step * (j + 1) - 1``, both off the edge, and steps on
    either side of each multiple."""
    if not slopes:
        return (full,)
    near = {step * j + d for j in range(1, full // step + 1) for d in (-1, 0, 1)}
    return tuple(sorted(w for w in {1, full} | near if 1 <= w <= full))


@torch.inference_mode()
def _term(name: str, mod: nn.Module, call: LayerCall,
          slopes: tuple[dict[str, float], dict[str, float]], batch: int, nhwc: bool,
          probes: Sequence[float], step: int, runs: int, clock: Clock) -> LayerTerm | None:  # fmt: skip
    """The timed grid of one layer call (None if the layer cannot be rebuilt)."""
    shape_in, shape_out = call.shape_in, call.shape_out
    a0, b0 = shape_in[1], shape_out[1]
    a_sl, b_sl = slopes
    wise = _channelwise(mod)
    a_grid = _step_grid(a0, a_sl, step) if wise else _grid(a0, a_sl, probes)
    b_grid = (b0,) if wise else _step_grid(b0, b_sl, step)
    if wise:
        b_sl = {}  # the output follows the input width
    rows = []
    for a in a_grid:
        row = []
        for b in b_grid:
            layer = _layer(mod, a, b)
            if layer is None:
                return None
            x = torch.randn(batch, a, *shape_in[2:])
            if nhwc and x.dim() == 4:
                x, layer = x.contiguous(memory_format=torch.channels_last), set_layout(layer, True)
            fn = functools.partial(layer.eval(), x)
            row.append(
                statistics.median(timed_at_least(fn, runs, max(2, runs // 4), clock, PROBE_MS))
            )
        rows.append(tuple(row))
    return LayerTerm(name, a0, b0, a_sl, b_sl, a_grid, b_grid, tuple(rows))


def uniform_cut(
    model: nn.Module, example: torch.Tensor, fraction: float, exclude: Sequence[str] = ()
) -> nn.Module:
    """A copy of ``model`` with every unit cut to ``round(fraction * C)`` channels (smallest
    filter L1 norms removed), in the model's layout."""
    out = copy.deepcopy(model).eval()
    counts = uniform_counts(
        {u.name: u.channels for u in find_units(out, example, exclude)}, fraction
    )
    for name, keep in counts.items():
        unit = next(u for u in find_units(out, example, exclude) if u.name == name)
        mask = torch.zeros(unit.channels)
        mask[torch.topk(filter_l1(out, unit), keep).indices] = 1
        remove_channels(out, unit, mask, example, min_keep=1)
    return out.eval()


_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve")


def cpu_info() -> str:
    """The CPU's model name and the vector-extension flags that decide its kernels' speed, e.g.
    ``AMD EPYC (avx2 fma avx512f avx512_bf16)`` (a wider list than the benchmark cells')."""
    return cpu_summary(_CPU_FLAGS)


def _table(model: nn.Module, units: list[Unit], example: torch.Tensor, batch: int, threads: int,
           runtime: Runtime, probes: Sequence[float], step: int | None, runs: int,
           cuts: dict[float, nn.Module], clock: Clock, layers: LayerTiming) -> LatencyTable:  # fmt: skip
    step = step or (STEP_BATCH1 if batch == 1 else STEP)
    calls = layer_calls(model, example)
    slopes = _slopes(model, units, example, calls)
    mods = dict(model.named_modules())
    terms = []
    nhwc = is_channels_last(model)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cal = RoundTimer(cuts, example, batch, threads, runtime, runs, clock)
        # calibration rounds spread evenly over the grid's timings, the last one after them
        marks = {k * len(calls) // (CALIBRATION_ROUNDS - 1) for k in range(CALIBRATION_ROUNDS - 1)}
        for i, (call, sl) in enumerate(zip(calls, slopes, strict=True)):
            if i in marks:
                cal.round()
            mod = mods[call.module]
            term = _term(call.label, mod, call, sl, batch, nhwc, probes, step, runs, clock)
            if term is None:
                log.warning("%s: cannot be rebuilt at other widths; left to the fit", call.module)
            else:
                terms.append(term)
        while cal.rounds < CALIBRATION_ROUNDS:
            cal.round()
    finally:
        torch.set_num_threads(old)
    full = {u.name: u.channels for u in units}
    measured = cal.medians()
    if layers == "in-model":
        terms = with_extras(terms, cuts, example, batch, threads, runs, clock, full)
    return LatencyTable.fitted(batch, tuple(terms), measured, full)


def profile_latency(model: nn.Module, example: torch.Tensor, batches: Sequence[int] = (1, 64),
                    threads: int | None = None, runtime: Runtime = "torch",
                    probes: Sequence[float] = PROBES, step: int | None = None, runs: int = 10,
                    calibration: Sequence[float] | None = None,
                    clock: Clock = "wall", layers: LayerTiming = "alone") -> LatencyLUT:  # fmt: skip
    """Measure the latency table of ``model`` (any layout; its own is kept) on this machine.

    Args:
        model: the unpruned network, eval mode.
        example: ``[1, C, H, W]``.
        batches: one table per batch size.
        threads: torch (and ONNX Runtime) threads; default: torch's current number.
        runtime: where whole models are timed: ``torch`` (eager), ``export`` (``torch.export``
            program) or ``onnxruntime``.
        probes: keep fractions of the probed input widths (1.0 is always added).
        step: output widths are probed at every multiple of ``step`` and one either side;
            default :data:`STEP_BATCH1` (every width) at batch 1, :data:`STEP` above.
        runs: timed calls per grid point and per whole-model measurement (median).
        calibration: uniform keep fractions of the whole-model fit (1.0 is always added);
            default :data:`CALIBRATION`, or :data:`CALIBRATION_IN_MODEL` with in-model extras.
        clock: ``wall`` (elapsed) or ``cpu`` (the calling thread's CPU time; needs 1 thread).
        layers: ``in-model`` adds to each layer's grid its time inside the whole forward
            minus its time alone, measured at the calibration cuts
            (:func:`~rlprune.pruning.calls.with_extras`); ``alone``: the grid only.

    Raises:
        ConfigError: ``clock="cpu"`` with other than 1 thread, or on CUDA; in-model extras
            with another runtime than eager torch (one line).
    """
    n = threads or torch.get_num_threads()
    check_clock(clock, n, on_cuda(model, example))
    if step is not None and step < 1:
        raise ConfigError(f"step must be a positive number of channels, got {step}")
    if layers == "in-model" and runtime != "torch":
        # the extras are eager torch's (fresh blocks, unfused BN and ReLU); a compiled or
        # ONNX Runtime graph fuses and plans memory its own way
        raise ConfigError(f"layers=in-model times eager torch; use layers=alone with {runtime}")
    if calibration is None:
        calibration = CALIBRATION_IN_MODEL if layers == "in-model" else CALIBRATION
    model = copy.deepcopy(model).eval()
    units = find_units(model, example)
    cuts = {f: uniform_cut(model, example, f) for f in sorted({1.0, *calibration}, reverse=True)}
    t0 = time.perf_counter()
    tables = {
        b: _table(model, units, example, b, n, runtime, probes, step, runs, cuts, clock, layers)
        for b in batches
    }
    log.info(
        "latency table: %d batch size(s) profiled in %.0f s", len(tables), time.perf_counter() - t0
    )
    machine = {
        "cpu": cpu_info(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "channels_last": is_channels_last(model),
        "malloc": malloc_mode(),
    }
    return LatencyLUT(
        {u.name: u.channels for u in units}, tuple(example.shape[1:]), machine, runtime, n,
        tuple(sorted({*probes, 1.0})), tables, clock, layers,
    )  # fmt: skip
