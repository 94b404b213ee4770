"""The latency clocks: known answers for what each clock counts (a sleep costs wall time and no
CPU time, a busy loop costs both), the table file keeps its clock (old files read as wall),
combinations the CPU clock cannot time are refused in one line, and ``rlprune profile --clock``."""

from __future__ import annotations

import json
import logging
import re
import statistics
import threading
import time
from pathlib import Path

import pytest
import torch

from rlprune.checkpoint import save_checkpoint
from rlprune.cli import build_parser, main
from rlprune.errors import ConfigError
from rlprune.models import ModelSpec, build_model
from rlprune.pruning import measure_latency
from rlprune.pruning.clock import check_clock
from rlprune.pruning.latency import LatencyLUT, LatencyTable, LayerTerm
from rlprune.pruning.profile import profile_latency
from rlprune.pruning.timing import measure_runtime, time_calls

SLEEP_S = 0.02


def _spin(seconds: float) -> None:
    """Busy for ``seconds`` of this thread's CPU time (and at least as much wall time)."""
    t = time.thread_time()
    while time.thread_time() - t < seconds:
        pass


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def test_a_sleep_costs_wall_time_and_no_cpu_time() -> None:
    wall = time_calls(lambda: time.sleep(SLEEP_S), runs=3, warmup=0, clock="wall")
    cpu = time_calls(lambda: time.sleep(SLEEP_S), runs=3, warmup=0, clock="cpu")
    assert min(wall) >= 1e3 * SLEEP_S * 0.95  # sleep never returns early (ms)
    assert statistics.median(cpu) < 5.0  # the thread slept: a few microseconds of CPU


def test_a_busy_loop_costs_both() -> None:
    for clock in ("wall", "cpu"):
        ms = time_calls(lambda: _spin(SLEEP_S), runs=3, warmup=0, clock=clock)  # type: ignore[arg-type]
        assert min(ms) >= 1e3 * SLEEP_S * 0.95, clock
    # the CPU clock of a busy loop is its spin time plus the loop's last step: tight above
    cpu = time_calls(lambda: _spin(SLEEP_S), runs=3, warmup=0, clock="cpu")
    assert statistics.median(cpu) < 1e3 * SLEEP_S + 5.0


def test_work_in_another_thread_is_flagged(caplog: pytest.LogCaptureFixture) -> None:
    def elsewhere() -> None:
        t = threading.Thread(target=_spin, args=(SLEEP_S,))
        t.start()
        t.join()

    with caplog.at_level(logging.WARNING, logger="rlprune.pruning.timing"):
        ms = time_calls(elsewhere, runs=2, warmup=0, clock="cpu")
    assert statistics.median(ms) < 5.0  # the caller only waited
    assert "not counted" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlprune.pruning.timing"):
        time_calls(lambda: _spin(0.005), runs=2, warmup=0, clock="cpu")
        # calls of next to nothing: the loop's bookkeeping is the caller's work, not another
        # thread's (it once outweighed the timed calls and raised this warning)
        time_calls(lambda: None, runs=20_000, warmup=0, clock="cpu")
    assert caplog.text == ""


def _lut(**kw: str) -> LatencyLUT:
    t = LayerTerm("conv", 4, 8, {}, {"conv": 1.0}, (4,), (1, 8), ((1.0, 8.0),))
    table = LatencyTable(64, (t,), 1.0, 2.0, ((1.0, 10.0, 10.0),))
    return LatencyLUT({"conv": 8}, (4, 4, 4), {"cpu": "X"}, "torch", 1, (1.0,), {64: table}, **kw)  # type: ignore[arg-type]


def test_the_table_file_keeps_its_clock_and_old_files_are_wall(tmp_path: Path) -> None:
    cpu = _lut(clock="cpu")
    back = LatencyLUT.load(cpu.save(tmp_path / "cpu.json"))
    assert back == cpu and back.clock == "cpu"
    assert json.loads((tmp_path / "cpu.json").read_text())["clock"] == "cpu"
    assert _lut().clock == "wall"
    old = _lut().to_dict()
    del old["clock"]  # a table written before the field existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert LatencyLUT.load(tmp_path / "old.json").clock == "wall"
    old["clock"] = "cycles"
    (tmp_path / "bad.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="unknown clock"):
        LatencyLUT.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("clock", "threads", "cuda", "msg"),
    [("cpu", 2, False, "use 1 thread, not 2"), ("cpu", 1, True, "not CUDA kernels"),
     ("cycles", 1, False, "clock must be one of wall, cpu")],
)  # fmt: skip
def test_bad_clock_combinations_are_one_line_errors(
    clock: str, threads: int, cuda: bool, msg: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(msg)) as e:
        check_clock(clock, threads, cuda)
    assert "\n" not in str(e.value)
    check_clock("wall", threads, cuda)  # the wall clock times anything


def test_measurements_refuse_the_cpu_clock_with_two_threads() -> None:
    model = build_model("vgg-small", 1, 10, 8, width=0.25).eval()
    x = torch.randn(1, 1, 8, 8)
    calls = [
        lambda: measure_runtime(model, x, 1, 2, clock="cpu"),
        lambda: measure_latency(model, x, threads=2, clock="cpu"),
        lambda: profile_latency(model, x, (1,), threads=2, clock="cpu"),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match="use 1 thread, not 2"):
            call()
    assert torch.get_num_threads() == 1  # refused before the thread count was changed
    stats = measure_latency(model, x, runs=3, warmup=1, threads=1, clock="cpu")
    assert stats.clock == "cpu" and stats.threads == 1 and stats.median_ms > 0


def test_onnxruntime_with_one_thread_works_in_the_calling_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("onnxruntime")
    model = build_model("vgg-small", 1, 10, 8, width=0.25).eval()
    x = torch.randn(1, 1, 8, 8)
    with caplog.at_level(logging.WARNING, logger="rlprune.pruning.timing"):
        ms = measure_runtime(model, x, 16, 1, "onnxruntime", runs=5, clock="cpu")
    assert ms > 0
    assert "not counted" not in caplog.text  # no worker thread did the work


def test_cli_profile_clock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["profile", "--checkpoint", "m.pt", "--out", "l.json"]).clock == "wall"  # fmt: skip
    with pytest.raises(SystemExit):
        build_parser().parse_args(["profile", "--checkpoint", "m", "--out", "l", "--clock", "tsc"])
    capsys.readouterr()
    spec = ModelSpec("vgg-small", 1, 10, (8, 8), width=0.25)
    save_checkpoint(tmp_path / "m.pt", spec.build(), spec)
    argv = ["profile", "--checkpoint", str(tmp_path / "m.pt"), "--batch-size", "2",
            "--out", str(tmp_path / "lut.json"), "--clock", "cpu"]  # fmt: skip
    assert main([*argv, "--threads", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use 1 thread, not 2" in err[0]
    assert not (tmp_path / "lut.json").exists()
    assert main([*argv, "--threads", "1"]) == 0
    assert "cpu clock" in capsys.readouterr().out
    assert LatencyLUT.load(tmp_path / "lut.json").clock == "cpu"
