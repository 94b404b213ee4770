"""kill -9 a real `rlprune prune` subprocess; `--resume` must end with the same masks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlprune.checkpoint import save_checkpoint
from rlprune.config import TrainConfig
from rlprune.data import load_dataset
from rlprune.models import ModelSpec
from rlprune.train import train

FAST = [
    "--set",
    "agent.updates=4",
    "--set",
    "agent.samples=4",
    "--set",
    "finetune_steps=5",
    "--set",
    "final_finetune_epochs=0.1",
    "--set",
    "latency_runs=3",
    "--set",
    "rollout.reward_set=144",
]


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    data = load_dataset("digits")
    spec = ModelSpec("vgg-small", 1, 10, data.input_size, width=0.5)
    model = spec.build()
    train(model, data, TrainConfig(epochs=3), progress=False)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "model.pt", model, spec)


def _cmd(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlprune",
        "prune",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "digits",
        "--out",
        str(out),
        "--max-acc-drop",
        "1",
        "--quiet",
        *FAST,
        *extra,
    ]


def _masks(out: Path) -> list[list[int]]:
    return [u["kept"] for u in json.loads((out / "report.json").read_text())["units"]]


def _kill_when(cmd: list[str], ready) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _units_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"eval/val_acc"' in line for line in path.read_text().splitlines())


def _updates_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"rollout/reward_mean"' in line for line in path.read_text().splitlines())


@pytest.mark.faults
@pytest.mark.parametrize(
    "point",
    ["inside-agent-training", "after-a-unit"],
)
def test_kill9_then_resume_gives_identical_masks(
    digits_ckpt: Path, tmp_path: Path, point: str
) -> None:
    ref = tmp_path / "ref"
    subprocess.run(_cmd(digits_ckpt, ref), check=True, capture_output=True)
    out = tmp_path / "killed"
    if point == "inside-agent-training":
        _kill_when(_cmd(digits_ckpt, out), lambda: _updates_done(out) >= 6)  # unit 2, update 2
    else:
        _kill_when(_cmd(digits_ckpt, out), lambda: _units_done(out) >= 2)
    assert not (out / "report.json").exists()
    done = subprocess.run(_cmd(digits_ckpt, out, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _masks(out) == _masks(ref)


def test_existing_run_without_resume_is_refused(digits_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    subprocess.run(_cmd(digits_ckpt, out), check=True, capture_output=True)
    again = subprocess.run(_cmd(digits_ckpt, out), capture_output=True, text=True)
    assert again.returncode == 2
    assert "--resume" in again.stderr.strip().splitlines()[-1]
