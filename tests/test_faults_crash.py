"""Crashes: kill -9 and Ctrl-C at more points than tests/test_resume.py, and torn state files.

Each case interrupts a real ``rlprune prune`` subprocess, then ``--resume`` must finish with the
same final masks (``report.json`` ``units[*].kept``) as one uninterrupted reference run.
Exact kill points are hit with SIGSTOP: freeze the process when the run folder shows the
wanted moment, re-check the files of the frozen process, and only then SIGKILL it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlprune.runstate import RunDir
from tests.faultkit import cli_env, load_state_file, prune_argv, report_masks, temp_files

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(sys.platform != "linux", reason="uses SIGSTOP and /proc"),
]

# Longer per-unit fine-tuning than the other fault tests: a wider window to stop the process in.
SETTINGS = ("--set", "finetune_steps=30")


def _argv(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return prune_argv(ckpt, out, *SETTINGS, *extra)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=cli_env(),
            # Python only installs its Ctrl-C handler if SIGINT is not ignored; a background
            # pytest (nohup, CI) may hand an ignored SIGINT down.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def _freeze_when(proc: subprocess.Popen[bytes], moment: Callable[[], bool], timeout=120) -> bool:
    """SIGSTOP ``proc`` at ``moment`` (re-checked while frozen); False if it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if moment():
            os.kill(proc.pid, signal.SIGSTOP)
            _wait_stopped(proc.pid)
            if moment():
                return True
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)
    return False


def _wait_stopped(pid: int) -> None:
    """SIGSTOP is asynchronous: wait until the process really is stopped ('T')."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        time.sleep(0.001)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)  # also ends a SIGSTOPped process
    proc.wait(timeout=30)


def _resume(ckpt: Path, out: Path) -> str:
    log = out.parent / f"{out.name}-resume.log"
    proc = _start(_argv(ckpt, out, "--resume"), log)
    assert proc.wait(timeout=180) == 0, log.read_text()
    return log.read_text()


def _records(out: Path) -> list[dict]:
    saved = load_state_file(out / "state" / "model.pt")
    return list(saved["records"]) if saved is not None else []


def _agent(out: Path) -> dict | None:
    return load_state_file(out / "state" / "agent.pt")


def _assert_finished_like(ref: Path, out: Path) -> None:
    assert report_masks(out) == report_masks(ref)
    assert temp_files(out) == [], temp_files(out)
    for name in ("model.pt", "model.pt2", "report.md"):
        assert (out / name).is_file(), name


@pytest.fixture(scope="module")
def reference(digits_baseline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run: the masks every interrupted run must reproduce."""
    out = tmp_path_factory.mktemp("crash") / "reference"
    log = out.parent / "reference.log"
    assert _start(_argv(digits_baseline, out), log).wait(timeout=180) == 0, log.read_text()
    return out


def test_clean_run_leaves_no_temp_files(reference: Path) -> None:
    assert (reference / "report.json").is_file()
    assert temp_files(reference) == []


def test_kill9_during_fine_tuning(digits_baseline: Path, reference: Path, tmp_path: Path) -> None:
    """Killed after a unit's mask is decided and saved, before its fine-tune is checkpointed."""
    out = tmp_path / "run"

    def fine_tuning() -> bool:
        agent, done = _agent(out), [r["unit"] for r in _records(out)]
        return (
            len(done) >= 1
            and agent is not None
            and agent["progress"]["decided"] is not None
            and agent["unit"] not in done
        )

    proc = _start(_argv(digits_baseline, out), tmp_path / "run.log")
    assert _freeze_when(proc, fine_tuning), "the run finished before any fine-tune window"
    _kill(proc)
    assert fine_tuning()  # what --resume finds: a decided mask, the unit not yet finished
    _resume(digits_baseline, out)
    _assert_finished_like(reference, out)


def test_kill9_at_seeded_random_moments(
    digits_baseline: Path, reference: Path, tmp_path: Path
) -> None:
    """Three kill -9 at seeded random delays (each once the process works), then finish. Where
    the run ends within the first delay (a fast or an idle machine), it starts afresh and is
    killed as soon as it works, so at least one kill always lands."""
    rng = random.Random(20240607)
    out = tmp_path / "run"

    def working(extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        proc = _start(_argv(digits_baseline, out, *extra), tmp_path / "run.log")
        lines = len(RunDir(out).read_metrics())
        deadline = time.monotonic() + 120
        while (
            proc.poll() is None
            and len(RunDir(out).read_metrics()) <= lines
            and not (out / "state" / "final.pt").exists()
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        return proc

    kills = 0
    for attempt in range(3):
        proc = working(("--resume",) if attempt else ())
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        _kill(proc)
        kills += 1
    if kills == 0:
        shutil.rmtree(out)
        proc = working()
        assert proc.poll() is None, "the run finished before it could be killed"
        _kill(proc)
    if not (out / "report.json").exists():
        _resume(digits_baseline, out)
    _assert_finished_like(reference, out)


def test_kill9_while_writing_artefacts(
    digits_baseline: Path, reference: Path, tmp_path: Path
) -> None:
    """Killed after the last unit, before report.json exists: twice, at two moments."""
    out = tmp_path / "run"

    def moment(pruned_file_written: bool) -> Callable[[], bool]:
        def at() -> bool:
            if (out / "report.json").exists() or not (out / "state" / "final.pt").exists():
                return False
            return (out / "model.pt").exists() == pruned_file_written

        return at

    # 1. final fine-tune saved, nothing written yet; 2. (resumed) the pruned model.pt written,
    # the .pt2 export and report not yet.
    for attempt, written in enumerate((False, True)):
        extra = ("--resume",) if attempt else ()
        proc = _start(_argv(digits_baseline, out, *extra), tmp_path / "run.log")
        assert _freeze_when(proc, moment(written)), f"missed window {attempt + 1}"
        _kill(proc)
        assert not (out / "report.json").exists()
    # What a kill inside atomic_write or inside a metrics append would also have left.
    (out / ".report.json.k1ll3d.tmp").write_text('{"units": [')
    (out / "state" / ".model.pt.k1ll3d.tmp").write_bytes(b"PK\x03\x04")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"unit": "torn')
    _resume(digits_baseline, out)
    _assert_finished_like(reference, out)
    assert (out / "metrics.jsonl").read_text().endswith('{"unit": "torn\n')


def test_truncated_state_files_fall_back_to_previous(
    digits_baseline: Path, reference: Path, tmp_path: Path
) -> None:
    """agent.pt and model.pt torn to half their bytes: --resume warns, uses the .prev copies."""
    out = tmp_path / "run"

    def inside_third_unit() -> bool:
        agent, done = _agent(out), [r["unit"] for r in _records(out)]
        return (
            len(done) >= 2
            and agent is not None
            and agent["unit"] not in done
            and agent["progress"]["update"] >= 2
            and (out / "state" / "model.pt.prev").exists()
        )

    proc = _start(_argv(digits_baseline, out), tmp_path / "run.log")
    assert _freeze_when(proc, inside_third_unit), "the run finished before the kill point"
    _kill(proc)
    torn = [out / "state" / "agent.pt", out / "state" / "model.pt"]
    for path in torn:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert load_state_file(path) is None  # really unreadable now
    # A torn metrics line too: the resumed run's records must not be glued onto it.
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"unit": "torn')
    log = _resume(digits_baseline, out)
    for path in torn:
        warned = [ln for ln in log.splitlines() if "corrupt" in ln and f"{path} " in ln]
        assert len(warned) == 1, log
        assert "trying the previous one" in warned[0]
    _assert_finished_like(reference, out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    after = lines[lines.index('{"unit": "torn') + 1 :]
    assert after and len(RunDir(out).read_metrics()) == len(lines) - 1


def test_sigint_exits_130_and_resumes(
    digits_baseline: Path, reference: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "run", tmp_path / "run.log"

    def inside_second_unit() -> bool:  # agent training, not at a unit boundary (see below)
        agent, done = _agent(out), [r["unit"] for r in _records(out)]
        return (
            len(done) >= 1
            and agent is not None
            and agent["unit"] not in done
            and agent["progress"]["update"] >= 1
            and agent["progress"]["decided"] is None
        )

    proc = _start(_argv(digits_baseline, out), log)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not inside_second_unit() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before Ctrl-C"
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    stderr = log.read_text()
    assert "Traceback" not in stderr, stderr
    mentions = [ln for ln in stderr.splitlines() if "--resume" in ln]
    assert len(mentions) == 1 and stderr.strip().splitlines()[-1] == mentions[0], stderr
    assert str(out) in mentions[0]
    state = RunDir(out)
    assert state.load_state("model.pt") is not None
    assert state.load_state("agent.pt") is not None
    assert not (out / "report.json").exists()
    _resume(digits_baseline, out)
    _assert_finished_like(reference, out)


class _CtrlCOnce(torch.nn.Module):
    """A conv net whose first forward is interrupted as if Ctrl-C arrived during it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.classifier = torch.nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt
        return self.classifier(self.conv(x).mean((-2, -1)))


def test_ctrl_c_during_a_graph_trace_is_not_swallowed() -> None:
    from rlprune.pruning import find_units

    with pytest.raises(KeyboardInterrupt):
        find_units(_CtrlCOnce(), torch.zeros(1, 1, 8, 8))
