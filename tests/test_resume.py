"""kill -9 a real `rlprune prune` subprocess; `--resume` ends with the same masks.

More kill points (fine-tuning, artefact writing, torn state, SIGINT) are in
tests/test_faults_crash.py; this module covers the two the search loop is built around.
"""

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faultkit import cli_env, prune_argv, report_masks


@pytest.fixture(scope="module")
def reference(digits_baseline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "ref"
    subprocess.run(prune_argv(digits_baseline, out), check=True, capture_output=True, env=cli_env())
    return out


def _count(out: Path, key: str) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(f'"{key}"' in line for line in path.read_text().splitlines())


def _kill_when(cmd: list[str], ready: Callable[[], bool]) -> None:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env()
    )
    deadline = time.time() + 120
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "run finished before the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.faults
@pytest.mark.parametrize(
    ("point", "key", "count"),
    [
        ("inside agent training (unit 2, update 2)", "rollout/reward_mean", 6),
        ("after two finished units", "eval/val_acc", 2),
    ],
)
def test_kill9_then_resume_gives_identical_masks(
    digits_baseline: Path, reference: Path, tmp_path: Path, point: str, key: str, count: int
) -> None:
    out = tmp_path / "killed"
    _kill_when(prune_argv(digits_baseline, out), lambda: _count(out, key) >= count)
    assert not (out / "report.json").exists(), point
    done = subprocess.run(
        prune_argv(digits_baseline, out, "--resume"), capture_output=True, text=True, env=cli_env()
    )
    assert done.returncode == 0, done.stderr
    assert report_masks(out) == report_masks(reference), point


def test_existing_run_without_resume_is_refused(digits_baseline: Path, reference: Path) -> None:
    again = subprocess.run(
        prune_argv(digits_baseline, reference), capture_output=True, text=True, env=cli_env()
    )
    assert again.returncode == 2
    assert "--resume" in again.stderr.strip().splitlines()[-1]
