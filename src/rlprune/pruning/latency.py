"""Latency as a function of the per-unit channel counts: a fitted per-layer lookup table.

In the spirit of NetAdapt (Yang et al., ECCV 2018), a model's latency is predicted from
per-layer tables rather than from MACs: a filter of an early, high-resolution layer costs other
time per MAC than one of a late layer, and CPU kernels favour some channel counts over others.
AMC (He et al., ECCV 2018) prunes under such a latency budget too.

Each timed layer call (a conv, linear, BN, ReLU, pooling, ...) is one :class:`LayerTerm`: its
input width ``a`` and output width ``b`` are affine in the kept channels of the units that touch
it (a conv between two units depends on both neighbours; a concat or a grouped conv loses
several channels per unit channel), and its time was measured on a grid of ``(a, b)`` probe
widths and is interpolated bilinearly between them. The whole model's prediction is
``offset + scale * sum(terms)``, with ``offset`` and ``scale`` fitted against whole-model
measurements (full width and uniform cuts) so that the un-timed functional ops and per-call
overheads are accounted for. Measuring the tables: :mod:`rlprune.pruning.profile`.

The table is a JSON file (:meth:`LatencyLUT.save` / :meth:`LatencyLUT.load`) that records where
it was made (CPU, threads, batch, runtime, clock, torch) and which model it fits (unit names and
widths, input shape); :meth:`LatencyLUT.check_fits` refuses it for any other model.
Clocks: :mod:`rlprune.pruning.clock`.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from rlprune.errors import ConfigError
from rlprune.pruning.clock import CLOCKS, Clock, check_clock, clock_reader

__all__ = [
    "LUT_FORMAT",
    "LUT_VERSION",
    "Clock",
    "CostCurve",
    "LatencyLUT",
    "LatencyModel",
    "LatencyTable",
    "LAYER_TIMINGS",
    "LayerTerm",
    "LayerTiming",
    "Runtime",
    "check_clock",
    "clock_reader",
    "uniform_counts",
]

Runtime = Literal["torch", "export", "onnxruntime"]
LayerTiming = Literal["alone", "in-model"]
LAYER_TIMINGS: tuple[LayerTiming, ...] = ("alone", "in-model")
LUT_FORMAT = "rlprune-latency-table"
LUT_VERSION = 2  # 2: terms may carry in-model extras, which version-1 readers would ignore
_READS = (1, 2)
_MAX_LUT_BYTES = 32 << 20


def uniform_counts(full: Mapping[str, int], fraction: float) -> dict[str, int]:
    """Every unit at ``round(fraction * C)`` of its ``C`` channels, at least 1: a calibration cut."""
    return {u: max(1, round(fraction * c)) for u, c in full.items()}


def _interp(grid: tuple[float, ...], x: float) -> tuple[int, int, float]:
    """``(i, j, w)``: ``x`` lies between ``grid[i]`` and ``grid[j]`` at weight ``w`` of
    ``grid[j]`` (linear extrapolation beyond the ends; one grid point: ``(0, 0, 0)``)."""
    if len(grid) == 1:
        return 0, 0, 0.0
    j = min(max(bisect.bisect_left(grid, x), 1), len(grid) - 1)
    i = j - 1
    return i, j, (x - grid[i]) / (grid[j] - grid[i])


@dataclass(frozen=True)
class LayerTerm:
    """One timed layer call.

    Attributes:
        name: module name (``name#k`` for the k-th call of a module called more than once).
        a0, b0: input and output channels (features for a linear layer) at full width.
        a_slopes, b_slopes: per unit, input / output channels lost per removed unit channel.
        a_grid, b_grid: probe widths (ascending; one entry where the width never changes).
        ms: ``[len(a_grid)][len(b_grid)]`` measured milliseconds.
        extra: ``(width, ms)`` points, ascending: the layer's time inside the whole forward
            minus its time alone, measured with every unit cut alike; ``width`` is the output
            width (the input width where only that changes). Empty: timed alone only.
    """

    name: str
    a0: int
    b0: int
    a_slopes: dict[str, float]
    b_slopes: dict[str, float]
    a_grid: tuple[int, ...]
    b_grid: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]
    extra: tuple[tuple[float, float], ...] = ()

    def widths(self, counts: Mapping[str, float], full: Mapping[str, int]) -> tuple[float, float]:
        """``(a, b)`` with ``counts[u]`` of ``full[u]`` channels kept in every unit ``u``."""
        a = self.a0 - sum(s * (full[u] - counts[u]) for u, s in self.a_slopes.items())
        b = self.b0 - sum(s * (full[u] - counts[u]) for u, s in self.b_slopes.items())
        return max(a, 1.0), max(b, 1.0)

    def predict(self, a: float, b: float) -> float:
        """Milliseconds at widths ``(a, b)``: bilinear in the grid, never below 0."""
        i0, i1, wa = _interp(self.a_grid, a)
        j0, j1, wb = _interp(self.b_grid, b)
        m = self.ms
        lo = m[i0][j0] * (1 - wb) + m[i0][j1] * wb
        hi = m[i1][j0] * (1 - wb) + m[i1][j1] * wb
        return max(0.0, lo * (1 - wa) + hi * wa + self.in_model(self.extra_width(a, b)))

    def extra_width(self, a: float, b: float) -> float:
        """The width the in-model extra follows: the output's, or else the input's (per-channel)."""
        return b if self.b_slopes else a

    def in_model(self, width: float) -> float:
        """The in-model extra (ms) at ``width``: linear between the measured points and from
        ``(0, 0)`` (no output, no extra) to the first; the last point's value beyond it."""
        if not self.extra:
            return 0.0
        pts = ((0.0, 0.0), *self.extra)
        if width >= pts[-1][0]:
            return pts[-1][1]
        i, j, w = _interp(tuple(p[0] for p in pts), width)
        return pts[i][1] * (1 - w) + pts[j][1] * w

    def alone(self) -> LayerTerm:
        """This term without its in-model extra (the layer as timed alone)."""
        return replace(self, extra=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "a0": self.a0, "b0": self.b0,
            "a_slopes": self.a_slopes, "b_slopes": self.b_slopes,
            "a_grid": list(self.a_grid), "b_grid": list(self.b_grid),
            "ms": [list(r) for r in self.ms],
        } | ({"extra": [list(e) for e in self.extra]} if self.extra else {})  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerTerm:
        a_grid, b_grid = _ints(d["a_grid"], "a_grid"), _ints(d["b_grid"], "b_grid")
        ms = tuple(tuple(_num(v, "ms") for v in row) for row in d["ms"])
        if len(ms) != len(a_grid) or any(len(r) != len(b_grid) for r in ms):
            raise ValueError(f"layer {str(d['name'])[:40]}: ms does not match its grid")
        for g in (a_grid, b_grid):
            if not g or list(g) != sorted(set(g)):
                raise ValueError("a grid is empty or not ascending")
        a_sl, b_sl = (
            {str(k): _num(v, "slope") for k, v in d[s].items()} for s in ("a_slopes", "b_slopes")
        )
        extra = tuple((_num(w, "extra"), _num(e, "extra")) for w, e in d.get("extra", []))
        if [w for w, _ in extra] != sorted({w for w, _ in extra}) or any(w <= 0 for w, _ in extra):
            raise ValueError(
                f"layer {str(d['name'])[:40]}: extra widths are not positive and ascending"
            )
        return cls(
            str(d["name"]), int(d["a0"]), int(d["b0"]), a_sl, b_sl, a_grid, b_grid, ms, extra
        )


def _num(v: Any, what: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"{what} holds a non-number")
    return float(v)


def _ints(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(type(x) is int and x >= 1 for x in v):
        raise ValueError(f"{what} is not a list of positive integers")
    return tuple(v)


@dataclass(frozen=True)
class LatencyTable:
    """The fitted table of one batch size: ``offset + scale * sum(term predictions)`` ms.

    ``calibration``: ``(keep fraction, measured ms, predicted ms)`` of the whole-model
    measurements the fit used (every unit cut to the fraction)."""

    batch: int
    terms: tuple[LayerTerm, ...]
    scale: float
    offset: float
    calibration: tuple[tuple[float, float, float], ...] = ()

    def raw(self, counts: Mapping[str, float], full: Mapping[str, int]) -> float:
        """Sum of the per-layer predictions (ms), before calibration."""
        return sum(t.predict(*t.widths(counts, full)) for t in self.terms)

    @classmethod
    def fitted(cls, batch: int, terms: tuple[LayerTerm, ...], measured: Mapping[float, float],
               full: Mapping[str, int]) -> LatencyTable:  # fmt: skip
        """The table whose ``offset + scale * raw`` is the least-squares fit of ``measured``:
        whole-model ms with every unit of ``full`` cut to ``round(fraction * C)`` channels
        (a non-positive or undetermined slope falls back to a pure scale).

        Raises:
            ValueError: no measurements (a table from a file without calibration points)."""
        if not measured:
            raise ValueError("no whole-model measurements to fit")
        raw0 = cls(batch, terms, 1.0, 0.0)
        pts = [(f, m, raw0.raw(uniform_counts(full, f), full)) for f, m in measured.items()]
        xs, ys = [p[2] for p in pts], [p[1] for p in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        spread = var > 1e-12 * max(mx * mx, 1e-12) * len(xs)  # raws apart, not rounding apart
        scale = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if spread else 0
        offset = my - scale * mx
        if scale <= 0:
            scale, offset = sum(ys) / max(sum(xs), 1e-12), 0.0
        cal = tuple((f, m, offset + scale * r) for f, m, r in pts)
        return cls(batch, terms, scale, offset, cal)

    def alone(self, full: Mapping[str, int]) -> LatencyTable:
        """The table refitted with every layer as timed alone (no in-model extras)."""
        measured = {f: m for f, m, _ in self.calibration}
        return self.fitted(self.batch, tuple(t.alone() for t in self.terms), measured, full)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "scale": self.scale, "offset": self.offset,
            "calibration": [list(c) for c in self.calibration],
            "terms": [t.to_dict() for t in self.terms],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        cal = tuple(tuple(_num(v, "calibration") for v in c) for c in d.get("calibration", []))
        terms = tuple(LayerTerm.from_dict(t) for t in d["terms"])
        if type(d["batch"]) is not int or d["batch"] < 1:
            raise ValueError("batch is not a positive integer")
        return cls(d["batch"], terms, _num(d["scale"], "scale"), _num(d["offset"], "offset"), cal)  # type: ignore[arg-type]


class LatencyModel:
    """Predicted latency (ms) as a function of the per-unit channel counts, with the call shape
    of :class:`~rlprune.pruning.UnitMacs`: ``total`` (the full model), ``model(counts)``, and
    ``line(unit, counts)`` for one unit's counts with the others fixed.

    Units missing from ``counts`` are at full width (an excluded unit is never cut)."""

    def __init__(self, table: LatencyTable, channels: Mapping[str, int]) -> None:
        self.table, self.channels, self.batch = table, dict(channels), table.batch
        self.total = self(self.channels)

    def __call__(self, counts: Mapping[str, float]) -> float:
        for u, k in counts.items():
            if u not in self.channels or not 0 <= k <= self.channels[u]:
                raise ConfigError(f"latency table: unit {u} cannot keep {k} channels")
        full = {**self.channels, **counts}
        return self.table.offset + self.table.scale * self.table.raw(full, self.channels)

    def line(self, unit: str, counts: Mapping[str, float] | None = None) -> CostCurve:
        """Latency with ``k = 0..C`` channels of ``unit`` (``C`` its width in ``counts``, the
        model as it is now), every other unit as in ``counts`` (default: full width)."""
        now = dict(counts or self.channels)
        c = int(now.get(unit, self.channels[unit]))
        return CostCurve(tuple(self({**now, unit: max(k, 1)}) for k in range(c + 1)))


@dataclass(frozen=True)
class CostCurve:
    """A model cost (e.g. latency in ms) as a function of one unit's kept channels, the others
    fixed: ``values[k]`` with ``k`` kept, ``k = 0..C``. The same interface as
    :class:`~rlprune.pruning.MacModel`: ``total``, ``cost(kept)``, ``count_for(budget)``."""

    values: tuple[float, ...]

    @property
    def total(self) -> float:
        return self.values[-1]

    def cost(self, kept: int | torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """Cost with ``kept`` channels (int or ``[K]`` tensor of counts) -> float64 tensor."""
        k = torch.as_tensor(kept).round().long().clamp(0, len(self.values) - 1)
        return torch.tensor(self.values, dtype=torch.float64)[k]

    def count_for(self, budget: float, channels: int | None = None) -> int:
        """The kept count (>= 1) whose cost is closest to ``budget`` (ties: more channels)."""
        return min(range(1, len(self.values)), key=lambda k: (abs(self.values[k] - budget), -k))


@dataclass(frozen=True)
class LatencyLUT:
    """A latency table file: where it was made, which model it fits, one table per batch.

    Attributes:
        units: unit name -> channels of the model it was made for (full width).
        input_shape: ``[C, H, W]`` of one example.
        machine: CPU model and flags, platform, torch version.
        runtime, threads: how it was timed. probes: the keep fractions of the probe grid.
        tables: batch size -> :class:`LatencyTable`.
        clock: what its milliseconds are (``wall`` or ``cpu``, see :data:`Clock`); latencies
            compared with its predictions must be measured on the same clock (and threads,
            runtime). Tables written before the field existed are ``wall``.
        layers: how its layers were timed (:data:`LayerTiming`; older files: ``alone``).
    """

    units: dict[str, int]
    input_shape: tuple[int, ...]
    machine: dict[str, Any]
    runtime: Runtime
    threads: int
    probes: tuple[float, ...]
    tables: dict[int, LatencyTable]
    clock: Clock = "wall"
    layers: LayerTiming = "alone"

    def model(self, batch: int) -> LatencyModel:
        if batch not in self.tables:
            have = ", ".join(str(b) for b in sorted(self.tables))
            raise ConfigError(f"latency table has no batch {batch} (it has {have})")
        return LatencyModel(self.tables[batch], self.units)

    def check_fits(
        self, units: Mapping[str, int], input_shape: tuple[int, ...], where: str
    ) -> None:
        """Raise :class:`ConfigError` (one line) unless the table was made for this model."""
        if tuple(input_shape) != tuple(self.input_shape):
            raise ConfigError(
                f"latency table {where} was made for input {list(self.input_shape)}, "
                f"not {list(input_shape)}; profile this model: rlprune profile"
            )
        for name, c in units.items():
            if self.units.get(name) != c:
                there = self.units.get(name)
                what = "has no unit" if there is None else f"has {there} channels in unit"
                raise ConfigError(
                    f"latency table {where} does not fit this model: it {what} {name} "
                    f"({c} here); profile this model: rlprune profile"
                )
        extra = sorted(set(self.units) - set(units))
        if extra:
            raise ConfigError(
                f"latency table {where} does not fit this model: unit {extra[0]} is not in it; "
                "profile this model: rlprune profile"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT, "version": LUT_VERSION if self.layers == "in-model" else 1,
            "units": self.units,
            "input_shape": list(self.input_shape), "machine": self.machine,
            "runtime": self.runtime, "threads": self.threads, "clock": self.clock,
            "layers": self.layers, "probes": list(self.probes),
            "tables": {str(b): t.to_dict() for b, t in sorted(self.tables.items())},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> LatencyLUT:
        if not isinstance(d, dict) or d.get("format") != LUT_FORMAT:
            raise ValueError("not an rlprune latency table (format)")
        if d.get("version") not in _READS:
            raise ValueError(f"version {str(d.get('version'))[:20]}, expected 1 or {LUT_VERSION}")
        units = {str(k): v for k, v in d["units"].items()}
        if not all(type(v) is int and v >= 1 for v in units.values()):
            raise ValueError("units must map names to channel counts")
        if d["runtime"] not in ("torch", "export", "onnxruntime"):
            raise ValueError("unknown runtime")
        clock = d.get("clock", "wall")  # tables from before the field were timed on the wall
        if clock not in CLOCKS:
            raise ValueError("unknown clock")
        layers = d.get("layers", "alone")  # tables from before the field timed layers alone
        if layers not in LAYER_TIMINGS:
            raise ValueError("unknown layer timing")
        tables = {int(b): LatencyTable.from_dict(t) for b, t in d["tables"].items()}
        if not tables or any(t.batch != b for b, t in tables.items()):
            raise ValueError("tables must be keyed by their batch size")
        shape = _ints(d["input_shape"], "input_shape")
        probes = tuple(_num(p, "probes") for p in d["probes"])
        machine = d["machine"] if isinstance(d["machine"], dict) else {}
        return cls(
            units, shape, machine, d["runtime"], int(d["threads"]), probes, tables, clock, layers
        )

    def save(self, path: str | Path) -> Path:
        from rlprune.checkpoint import atomic_write

        text = json.dumps(self.to_dict(), indent=1)
        return atomic_write(path, lambda f: f.write(text), mode="w")

    @classmethod
    def load(cls, path: str | Path) -> LatencyLUT:
        """Read a table file; any unreadable or malformed file is a one-line ConfigError."""
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_LUT_BYTES + 1)
            if len(raw) > _MAX_LUT_BYTES:
                raise ValueError("larger than 32 MiB")
            return cls.from_dict(json.loads(raw))
        except OSError as e:
            raise ConfigError(f"cannot read latency table {path}: {e.strerror or e}") from e
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            msg = str(e)[:160]
            raise ConfigError(f"{path} is not a valid rlprune latency table ({msg})") from e
