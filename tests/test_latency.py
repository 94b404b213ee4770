"""Latency tables: known-answer predictions, rounding, the file format, refusal of a table made
for another model, and searches driven by a table (timings themselves are never asserted)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch

from rlprune.checkpoint import save_checkpoint
from rlprune.cli import main
from rlprune.config import PruneConfig, RewardConfig
from rlprune.errors import ConfigError
from rlprune.models import ModelSpec, build_model
from rlprune.pruning import find_units
from rlprune.pruning.latency import (
    CostCurve,
    LatencyLUT,
    LatencyModel,
    LatencyTable,
    LayerTerm,
)
from rlprune.pruning.profile import _step_grid, profile_latency
from rlprune.pruning.timing import RoundTimer
from rlprune.pruning.units import round_count
from tests.test_search_toy import _toy_cfg, _toy_prune
from tests.toy import Logged, ToyNet, blocks


def _term(name: str, a_sl: dict[str, float], b_sl: dict[str, float], a_grid: tuple[int, ...],
          b_grid: tuple[int, ...], ms: list[list[float]], a0: int = 8, b0: int = 8) -> LayerTerm:  # fmt: skip
    return LayerTerm(name, a0, b0, a_sl, b_sl, a_grid, b_grid, tuple(tuple(r) for r in ms))


def test_bilinear_prediction_by_hand() -> None:
    # a conv between units "u" (input) and "v" (output): ms on a 2x2 grid
    t = _term("conv", {"u": 1.0}, {"v": 1.0}, (4, 8), (4, 8), [[1.0, 2.0], [3.0, 5.0]])
    assert t.predict(8, 8) == 5.0
    assert t.predict(6, 8) == pytest.approx(3.5)  # halfway between 2 and 5
    assert t.predict(6, 6) == pytest.approx((1.5 + 4.0) / 2)  # rows 1.5 and 4.0
    assert t.predict(2, 4) == pytest.approx(0.0)  # extrapolated below, clamped at 0
    assert t.widths({"u": 5, "v": 7}, {"u": 8, "v": 8}) == (5, 7)
    # the model: offset + scale * (term + a constant term)
    const = _term("pool", {}, {}, (8,), (8,), [[0.25]])
    table = LatencyTable(64, (t, const), scale=2.0, offset=0.5)
    lm = LatencyModel(table, {"u": 8, "v": 8})
    assert lm.total == pytest.approx(0.5 + 2.0 * (5.0 + 0.25))
    assert lm({"u": 6, "v": 6}) == pytest.approx(0.5 + 2.0 * (2.75 + 0.25))
    assert lm({"u": 6}) == pytest.approx(0.5 + 2.0 * (3.5 + 0.25))  # v at full width


def test_slopes_scale_widths_of_concats_and_grouped_convs() -> None:
    # a layer whose input concatenates two units, one of them seen twice per channel (G=2)
    t = _term("cat", {"u": 1.0, "w": 2.0}, {}, (4, 16), (8,), [[1.0], [4.0]], a0=16)
    assert t.widths({"u": 6, "w": 3}, {"u": 8, "w": 4}) == (16 - 2 - 2, 8)


def test_cost_curve_and_unit_line() -> None:
    t = _term("conv", {}, {"v": 1.0}, (8,), (1, 8), [[1.0, 8.0]])
    lm = LatencyModel(LatencyTable(1, (t,), 1.0, 2.0), {"v": 8})
    line = lm.line("v")
    assert line.values == tuple(2.0 + max(k, 1) for k in range(9))
    assert line.total == 10.0
    assert torch.equal(line.cost(torch.tensor([1, 4, 8])), torch.tensor([3.0, 6.0, 10.0]).double())
    assert line.count_for(6.0) == 4 and line.count_for(6.5) == 5  # tie: more channels
    assert lm.line("v", {"v": 5}).values == line.values[:6]  # the unit as it is now
    assert CostCurve((0.0, 1.0, 1.0)).count_for(1.0) == 2


@pytest.mark.parametrize(
    ("kept", "channels", "multiple", "need", "expected"),
    [(21, 64, 8, 1, 24), (20, 64, 8, 1, 24), (19, 64, 8, 1, 16), (3, 64, 8, 7, 8),
     (60, 62, 16, 1, 62), (57, 62, 16, 1, 62), (54, 62, 16, 1, 48), (55, 62, 16, 1, 62), (5, 10, 16, 1, 10),
     (13, 64, 1, 1, 13), (0, 64, 1, 4, 4), (70, 64, 8, 1, 64)],
)  # fmt: skip
def test_round_count(kept: int, channels: int, multiple: int, need: int, expected: int) -> None:
    got = round_count(kept, channels, multiple, need)
    assert got == expected
    assert need <= got <= channels and (got % multiple == 0 or got == channels)


def _toy_lut(cpu: str = "Some Other CPU (avx2)") -> LatencyLUT:
    """ToyNet's one unit ``conv`` (8 filters): latency ``2 + k`` ms with ``k`` kept."""
    t = _term("conv", {}, {"conv": 1.0}, (4,), (1, 8), [[1.0, 8.0]], a0=4)
    table = LatencyTable(64, (t,), scale=1.0, offset=2.0, calibration=((1.0, 10.0, 10.0),))
    return LatencyLUT({"conv": 8}, (4, 4, 4), {"cpu": cpu}, "torch", 1, (0.5, 1.0), {64: table})


def test_file_round_trip_and_refusals(tmp_path: Path) -> None:
    lut = _toy_lut()
    path = lut.save(tmp_path / "lut.json")
    back = LatencyLUT.load(path)
    assert back == lut
    back.check_fits({"conv": 8}, (4, 4, 4), "lut.json")
    cases = [
        ({"conv": 16}, (4, 4, 4), "has 8 channels in unit conv (16 here)"),
        ({"conv": 8, "fc": 4}, (4, 4, 4), "it has no unit fc"),
        ({}, (4, 4, 4), "unit conv is not in it"),
        ({"conv": 8}, (3, 4, 4), "was made for input [4, 4, 4]"),
    ]
    for units, shape, msg in cases:
        with pytest.raises(ConfigError, match=re.escape(msg)) as e:
            back.check_fits(units, shape, "lut.json")
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no batch 1"):
        back.model(1)
    bad = json.loads(path.read_text())
    bad["tables"]["64"]["terms"][0]["ms"] = [[1.0]]  # does not match its 1x2 grid
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="not a valid rlprune latency table"):
        LatencyLUT.load(tmp_path / "bad.json")


_UNIT = {"u": 1.0}  # a layer whose output follows unit u


def test_output_widths_are_probed_on_both_sides_of_each_block() -> None:
    assert _step_grid(20, _UNIT, 8) == (1, 7, 8, 9, 15, 16, 17, 20)
    assert _step_grid(16, _UNIT, 8) == (1, 7, 8, 9, 15, 16)
    assert _step_grid(3, _UNIT, 8) == (1, 3)  # narrower than a block: its ends
    assert _step_grid(3, _UNIT, 2) == (1, 2, 3)
    assert _step_grid(4, _UNIT, 1) == (1, 2, 3, 4)  # never a width of 0
    assert _step_grid(64, {}, 8) == (64,)  # no unit reaches it: its one width


def test_whole_models_are_timed_in_interleaved_rounds() -> None:
    log: list[str] = []
    cuts = {1.0: Logged("a", log), 0.5: Logged("b", log)}
    cal = RoundTimer(cuts, torch.zeros(1, 1, 2, 2), 1, 1, "torch", 4, "wall")
    for _ in range(3):
        cal.round()
    ms = cal.medians()
    assert set(ms) == {1.0, 0.5} and all(v >= 0 for v in ms.values()) and cal.rounds == 3
    assert [len(t) for t in cal.times.values()] == [3, 3]  # one list of calls per round
    assert blocks(log) == ["a", "b"] * 3  # a slow stretch cannot fall on one cut's timings only
    assert log.count("a") >= 3 * (4 + 3)  # at least runs timed calls and 3 warm-up per round


def test_batch_1_probes_every_output_width_and_larger_batches_the_block_grid() -> None:
    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 8, width=0.25).eval()
    x = torch.randn(1, 1, 8, 8)
    lut = profile_latency(model, x, batches=(1, 2), threads=1, probes=(0.5,), runs=1,
                          calibration=(0.5,))  # fmt: skip
    units = {u.name for u in find_units(model, x)}
    for b, grid in ((1, lambda c: tuple(range(1, c + 1))), (2, lambda c: _step_grid(c, _UNIT, 8))):
        convs = [t for t in lut.tables[b].terms if t.name in units]
        assert convs and all(t.b_grid == grid(t.b0) for t in convs)
    with pytest.raises(ConfigError, match="step must be a positive"):
        profile_latency(model, x, batches=(1,), step=0)


def test_profile_finds_the_neighbours_of_every_layer() -> None:
    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 8, width=0.25).eval()
    x = torch.randn(1, 1, 8, 8)
    lut = profile_latency(
        model, x, batches=(1,), threads=1, probes=(0.5,), step=8, runs=1, calibration=(0.5,)
    )
    units = [u.name for u in find_units(model, x)]
    assert lut.units == {u.name: u.channels for u in find_units(model, x)}
    table = lut.tables[1]
    convs = [t for t in table.terms if t.name in units]
    assert [t.name for t in convs] == units
    for prev, t in zip([None, *units], convs, strict=False):
        assert t.b_slopes == {t.name: 1.0}  # its own filters
        assert t.a_slopes == ({} if prev is None else {prev: 1.0})  # its neighbour's
        assert t.b_grid[0] == 1 and t.b_grid[-1] == t.b0
        assert t.b0 <= 8 or {7, 8, 9} <= set(t.b_grid)  # both sides of a vector block's edge
    assert [c[0] for c in table.calibration] == [1.0, 0.5]
    assert table.scale > 0  # the fit falls back to a pure scale rather than a negative one
    full = LatencyModel(table, lut.units)
    # the prediction is the calibrated sum of the probed terms (timings themselves are noise
    # here, one pass each on a shared machine, so no order between widths is asserted)
    one = {u: 1 for u in units}
    raw = table.raw({**lut.units, **one}, lut.units)
    assert full(one) == pytest.approx(table.offset + table.scale * raw)
    assert math.isfinite(full.total) and math.isfinite(full(one))


def test_latency_config_rules() -> None:
    ok = RewardConfig(mode="budget", efficiency="latency", target_latency=0.5)
    assert ok.target_macs == 0
    bad = [
        ({"mode": "budget", "target_latency": 0.5}, "target_macs"),  # latency needs efficiency
        ({"mode": "budget", "efficiency": "latency", "target_macs": 0.5}, "target_latency"),
        ({"mode": "budget", "target_macs": 0.5, "target_latency": 0.5}, "target_latency"),
        ({"target_latency": 0.5}, "target_latency"),  # accuracy mode takes no budget
        ({"latency_table": "lut.json"}, "latency_table"),  # unused table
        ({"mode": "budget", "efficiency": "latency", "target_latency": 1.0}, "target_latency"),
    ]
    for kw, key in bad:
        with pytest.raises(ConfigError, match=key):
            RewardConfig(**kw)  # type: ignore[arg-type]
    assert PruneConfig(strategy="joint", reward=ok).search_strategy() == "joint"
    with pytest.raises(ConfigError, match="round_to"):
        PruneConfig(round_to=0)


def test_a_table_made_elsewhere_drives_a_search_onto_its_target(tmp_path: Path) -> None:
    # latency 2 + k ms: a 0.6 target (6 ms) is met by keeping exactly the 4 useful filters
    path = _toy_lut(cpu="Elsewhere 9000 (amx_tile)").save(tmp_path / "lut.json")
    cfg = _toy_cfg(mode="budget", efficiency="latency", target_latency=0.6, latency_table=str(path))
    res = _toy_prune(ToyNet(), cfg, tmp_path / "run")
    (unit,) = res.units
    assert unit.kept == [0, 1, 2, 3] and res.pruned.test_acc == 100.0
    assert unit.budget_macs == pytest.approx(6.0)  # the unit's budget, in ms
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (row,) = report["latency"]["rows"]  # the table has batch 64 only
    assert row["batch"] == 64 and row["pruned"]["predicted_ms"] == pytest.approx(6.0)
    assert report["latency"]["cpu"] == "Elsewhere 9000 (amx_tile)"
    assert report["latency"]["malloc"] == "system"  # _toy_lut records none: glibc's default
    assert report["latency"]["measured_malloc"] in ("system", "steady")
    ratio = row["ratio"]  # pruned over baseline: 6 ms over 2 + 8 ms
    assert ratio["predicted"] == pytest.approx(0.6)
    assert ratio["measured"] == pytest.approx(
        row["pruned"]["measured_ms"] / row["baseline"]["measured_ms"]
    )
    assert ratio["error"] == pytest.approx(ratio["predicted"] / ratio["measured"] - 1)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Latency: predicted vs measured" in md and "system malloc; measured here" in md
    assert f"| 64 | 0.600x | {ratio['measured']:.3f}x |" in md


def test_a_report_measurement_that_cannot_run_is_a_warning_and_no_row(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from rlprune.search.costs import latency_report

    # a CPU-clock table made with 2 threads cannot be measured here (the clock counts one)
    lut = dataclasses.replace(_toy_lut(), clock="cpu", threads=2)
    net, x = ToyNet().eval(), torch.randn(1, 4, 4, 4)
    with caplog.at_level(logging.WARNING, logger="rlprune.search.costs"):
        rep = latency_report(lut, net, net, {"conv": 4}, x, runs=3)
    assert rep["rows"] == [] and "latency at batch 64 not measured" in caplog.text
    ok = latency_report(_toy_lut(), net, copy.deepcopy(net), {"conv": 4}, x, runs=3)
    (row,) = ok["rows"]
    assert row["ratio"]["predicted"] == pytest.approx(0.6) and row["baseline"]["measured_ms"] > 0


def test_accuracy_mode_rewards_latency_saved_and_round_to_rounds(tmp_path: Path) -> None:
    path = _toy_lut().save(tmp_path / "lut.json")
    cfg = _toy_cfg(mode="accuracy", max_acc_drop=1.0, efficiency="latency", latency_table=str(path))
    res = _toy_prune(ToyNet(), cfg, tmp_path / "a")
    assert res.units[0].kept == [0, 1, 2, 3]
    # round_to=8 on an 8-filter unit: every mask rounds to all 8 filters, which saves no
    # latency (reward 0), so the unit stays whole
    res = _toy_prune(ToyNet(), dataclasses.replace(cfg, round_to=8), tmp_path / "b")
    assert res.units[0].channels_after == 8 and res.units[0].chosen == "unpruned"
    # round_to=3: the 4 useful filters round to 3, which loses a class (beyond the bound)
    res = _toy_prune(ToyNet(), dataclasses.replace(cfg, round_to=3), tmp_path / "c")
    assert res.units[0].channels_after in (6, 8)


def test_cli_profile_then_a_mismatched_table_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    for width in (0.25, 0.5):
        spec = ModelSpec("vgg-small", 1, 10, (8, 8), width=width)
        save_checkpoint(tmp_path / f"w{width}.pt", spec.build(), spec)
    lut = tmp_path / "lut.json"
    # batch 2: batch 1 would probe every output width, for nothing this test checks
    argv = ["profile", "--checkpoint", str(tmp_path / "w0.25.pt"), "--batch-size", "2",
            "--threads", "1", "--out", str(lut)]  # fmt: skip
    assert main(argv) == 0
    assert "batch 2:" in capsys.readouterr().out
    data = json.loads(lut.read_text())
    assert data["threads"] == 1 and data["runtime"] == "torch" and list(data["tables"]) == ["2"]
    argv = ["prune", "--checkpoint", str(tmp_path / "w0.5.pt"), "--dataset", "digits",
            "--out", str(tmp_path / "run"), "--target-latency", "0.5", "--latency-table",
            str(lut), "--set", "reward.latency_batch=2", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # log lines, then the error
    assert err[-1].startswith("rlprune: error: latency table")
    assert sum("error" in line for line in err) == 1
    assert "does not fit this model" in err[-1]


@pytest.mark.parametrize("method", ["l1-uniform", "global-magnitude", "random"])
def test_heuristics_round_kept_counts(method: str) -> None:
    from rlprune.baselines import prune_to_target

    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 8, width=0.5).eval()
    x = torch.randn(1, 1, 8, 8)
    widths = {u.name: u.channels for u in find_units(model, x)}
    counts = {n: c // 2 - 1 for n, c in widths.items()}  # the count-based method's input
    kept = prune_to_target(model, method, 0.4, x, counts=counts, round_to=8)
    assert all(k % 8 == 0 or k == widths[n] for n, k in kept.items()), kept
    assert any(k < widths[n] for n, k in kept.items())
