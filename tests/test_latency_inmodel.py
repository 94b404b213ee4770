"""In-model layer times in latency tables: the extra curve's known answers, the refit without
it, the file format, and the extras measured on a real model (timings themselves are never
asserted; in-model times are replaced by known numbers where an exact answer is checked)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune.checkpoint import save_checkpoint
from rlprune.cli import main
from rlprune.errors import ConfigError
from rlprune.models import ModelSpec, build_model
from rlprune.pruning import calls as calls_mod
from rlprune.pruning.calls import in_model_ms, layer_calls, with_extras
from rlprune.pruning.latency import LatencyLUT, LatencyModel, LatencyTable, LayerTerm
from rlprune.pruning.profile import CALIBRATION_IN_MODEL, profile_latency, uniform_cut


def _conv(extra: tuple[tuple[float, float], ...] = ()) -> LayerTerm:
    # ms = 1 per output channel at any input width (a0 = 4 fixed), output unit "v" of 8
    return LayerTerm("conv", 4, 8, {}, {"v": 1.0}, (4,), (1, 8), ((1.0, 8.0),), extra)


def test_extra_curve_known_answers() -> None:
    t = _conv(((4.0, 2.0), (8.0, 6.0)))
    assert t.in_model(2.0) == pytest.approx(1.0)  # from (0, 0) to the first point
    assert t.in_model(4.0) == pytest.approx(2.0)
    assert t.in_model(6.0) == pytest.approx(4.0)  # between the points
    assert t.in_model(9.0) == pytest.approx(6.0)  # held beyond the last one
    assert t.predict(4, 6) == pytest.approx(6.0 + 4.0)  # grid + extra at the output width
    assert t.alone().predict(4, 6) == pytest.approx(6.0) and t.alone().extra == ()
    # a channel-wise layer (no output slopes) follows its input width
    bn = LayerTerm("bn", 8, 8, {"v": 1.0}, {}, (1, 8), (8,), ((1.0,), (8.0,)), ((8.0, 8.0),))
    assert bn.predict(4, 8) == pytest.approx(4.0 + 4.0)


def test_fitted_least_squares_and_alone_refit() -> None:
    t = _conv(((4.0, 4.0), (8.0, 8.0)))  # in-model: twice the grid
    full = {"v": 8}
    # whole model = 1 + 2 * (grid + extra) exactly: measured at keep 1 and 0.5
    table = LatencyTable.fitted(64, (t,), {1.0: 1 + 2 * 16.0, 0.5: 1 + 2 * 8.0}, full)
    assert table.scale == pytest.approx(2.0) and table.offset == pytest.approx(1.0)
    assert [c[2] for c in table.calibration] == pytest.approx([33.0, 17.0])
    assert LatencyModel(table, full)({"v": 6}) == pytest.approx(1 + 2 * 12.0)
    alone = table.alone(full)  # the same measurements on the grid alone: scale 4, offset 1
    assert alone.terms[0].extra == ()
    assert alone.scale == pytest.approx(4.0) and alone.offset == pytest.approx(1.0)
    # a measured curve that falls as the raw sum grows: a pure scale, never a negative one
    flat = LatencyTable.fitted(64, (t,), {1.0: 10.0, 0.5: 20.0}, full)
    assert flat.offset == 0.0 and flat.scale == pytest.approx(30.0 / 24.0)
    one = LatencyTable.fitted(64, (t,), {1.0: 8.0}, full)  # one point: a pure scale through it
    assert one.offset == 0.0 and one.scale == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no whole-model measurements"):
        LatencyTable(64, (t,), 1.0, 0.0).alone(full)  # an old file without calibration points


def test_file_keeps_extras_and_layer_timing(tmp_path: Path) -> None:
    table = LatencyTable(64, (_conv(((4.0, 0.5), (8.0, 1.5))),), 1.0, 0.0)
    lut = LatencyLUT({"v": 8}, (4, 4, 4), {}, "torch", 1, (1.0,), {64: table}, "cpu", "in-model")
    back = LatencyLUT.load(lut.save(tmp_path / "lut.json"))
    assert back == lut and back.tables[64].terms[0].extra == ((4.0, 0.5), (8.0, 1.5))
    raw = json.loads((tmp_path / "lut.json").read_text())
    # version 2: a version-1 reader would drop the extras and misread the fitted scale
    assert raw["version"] == 2
    alone = dataclasses.replace(
        lut, layers="alone", tables={64: LatencyTable(64, (_conv(),), 1, 0)}
    )
    assert json.loads(alone.save(tmp_path / "alone.json").read_text())["version"] == 1
    (tmp_path / "v3.json").write_text(json.dumps({**raw, "version": 3}))
    with pytest.raises(ConfigError, match="version 3, expected 1 or 2"):
        LatencyLUT.load(tmp_path / "v3.json")
    del raw["layers"]
    for term in raw["tables"]["64"]["terms"]:
        term.pop("extra")
    (tmp_path / "old.json").write_text(json.dumps(raw))
    old = LatencyLUT.load(tmp_path / "old.json")  # a table from before the fields
    assert old.layers == "alone" and old.tables[64].terms[0].extra == ()
    for bad, msg in (([[8.0, 1.0], [4.0, 1.0]], "positive and ascending"),
                     ([[0.0, 1.0]], "positive and ascending"), ([[4.0, "x"]], "non-number")):  # fmt: skip
        raw["tables"]["64"]["terms"][0]["extra"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(raw))
        with pytest.raises(ConfigError, match=msg):
            LatencyLUT.load(tmp_path / "bad.json")
    raw["tables"]["64"]["terms"][0].pop("extra")
    raw["layers"] = "sideways"
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="unknown layer timing"):
        LatencyLUT.load(tmp_path / "bad.json")


def _vgg() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("vgg-small", 1, 10, 8, width=0.25).eval(), torch.randn(1, 1, 8, 8)


class _Shared(nn.Module):
    """One ReLU module called three times, and a call with two inputs (not timed)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.pool = nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1)
        self.bil = nn.Bilinear(8, 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.relu(self.conv(x))))
        x = self.relu(self.conv2(x))
        v = self.pool(x).flatten(1)
        return self.bil(v, v)


def test_in_model_times_every_call_by_its_label() -> None:
    torch.manual_seed(0)
    model, x = _Shared().eval(), torch.randn(1, 1, 8, 8)
    calls = layer_calls(model, x)
    labels = [c.label for c in calls]
    assert labels == ["conv", "relu", "bn", "relu#2", "conv2", "relu#3", "pool"]  # no bil
    assert [c.module for c in calls] == ["conv", "relu", "bn", "relu", "conv2", "relu", "pool"]
    assert calls[4].shape_in == (1, 8, 6, 6) and calls[4].shape_out == (1, 8, 4, 4)
    torch.set_num_threads(2)  # conftest sets 1 again after the test
    got = in_model_ms(model, x, batch=2, threads=1, runs=3, clock="cpu")
    assert torch.get_num_threads() == 2  # restored
    assert list(got) == labels and sum(got.values()) > 0


def test_extras_average_points_at_one_width(monkeypatch: pytest.MonkeyPatch) -> None:
    # a term whose widths no unit changes sees the same width at every cut: one point, the mean
    fixed = LayerTerm("pool", 8, 8, {}, {}, (8,), (8,), ((1.0,),))
    cuts = {1.0: nn.Identity(), 0.5: nn.ReLU()}
    times = {1.0: 4.0, 0.5: 6.0}
    monkeypatch.setattr(
        calls_mod,
        "in_model_ms",
        lambda cut, *a, **k: {"pool": times[1.0 if isinstance(cut, nn.Identity) else 0.5]},
    )
    (term,) = with_extras([fixed], cuts, torch.zeros(1, 1), 2, 1, 1, "cpu", {"u": 8})
    assert term.extra == ((8.0, 4.0),)  # (4 - 1 + 6 - 1) / 2 at width 8


def test_extras_reproduce_the_in_model_times_at_the_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    # in-model times replaced by known numbers: each call's time is 10 ms per kept fraction
    # of the model's first unit, so the extra at every cut must be that minus the grid
    model, x = _vgg()
    lut = profile_latency(model, x, batches=(2,), threads=1, probes=(0.5,), runs=1,
                          calibration=(0.5,), clock="cpu")  # fmt: skip
    table, full = lut.tables[2], lut.units
    first = next(iter(full))
    cuts = {1.0: model, 0.5: uniform_cut(model, x, 0.5)}

    def fake(cut: torch.nn.Module, *args: object, **kw: object) -> dict[str, float]:
        frac = 1.0 if cut is model else 0.5
        return {t.name: 10.0 * frac for t in table.terms}

    monkeypatch.setattr(calls_mod, "in_model_ms", fake)
    terms = with_extras(list(table.terms), cuts, x, 2, 1, 1, "cpu", full)
    for frac in cuts:
        counts = {u: max(1, round(frac * c)) for u, c in full.items()}
        for t in terms:
            assert t.predict(*t.widths(counts, full)) == pytest.approx(10.0 * frac, abs=1e-9)
    assert any(len(t.extra) == 2 for t in terms if first in t.b_slopes)


def test_profile_in_model_end_to_end(tmp_path: Path) -> None:
    model, x = _vgg()
    lut = profile_latency(model, x, batches=(1,), threads=1, probes=(0.5,), runs=1,
                          calibration=(0.5,), layers="in-model")  # fmt: skip
    assert lut.layers == "in-model"
    assert all(t.extra for t in lut.tables[1].terms)
    back = LatencyLUT.load(lut.save(tmp_path / "lut.json"))
    assert back.model(1)(dict(lut.units)) == pytest.approx(lut.model(1).total)


def test_cli_profile_layers_in_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = ModelSpec("vgg-small", 1, 10, (8, 8), width=0.25)
    save_checkpoint(tmp_path / "m.pt", spec.build(), spec)
    out = tmp_path / "lut.json"
    argv = ["profile", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out), "--batch-size", "2",
            "--threads", "1", "--layers", "in-model"]  # fmt: skip
    assert main(argv) == 0
    lut = LatencyLUT.load(out)
    assert lut.layers == "in-model" and all(t.extra for t in lut.tables[2].terms)
    assert [c[0] for c in lut.tables[2].calibration] == list(CALIBRATION_IN_MODEL)
    assert "layers in-model" in capsys.readouterr().out
    assert main([*argv, "--runtime", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("layers=in-model times eager torch; use layers=alone with onnxruntime")
    assert "\n" not in err
