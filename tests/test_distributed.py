"""Two gloo processes (torchrun) find the same masks and rewards as one process."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from rlprune.checkpoint import save_checkpoint
from rlprune.config import TrainConfig
from rlprune.data import load_dataset
from rlprune.distributed import launch_argv
from rlprune.models import ModelSpec
from rlprune.train import train

TINY = [
    "--set",
    "agent.updates=3",
    "--set",
    "agent.samples=6",
    "--set",
    "latency_runs=3",
    "--set",
    "rollout.reward_set=144",
    "--quiet",
    "--max-acc-drop",
    "1",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    data = load_dataset("digits")
    spec = ModelSpec("vgg-small", 1, 10, data.input_size, width=0.25)
    model = spec.build()
    train(model, data, TrainConfig(epochs=2), progress=False)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "model.pt", model, spec)


def _run(ckpt: Path, out: Path, nproc: int, *extra: str) -> dict:
    prune = [
        "-m",
        "rlprune",
        "prune",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "digits",
        "--out",
        str(out),
        *TINY,
        *extra,
    ]
    cmd = launch_argv(nproc, prune)
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def _rewards(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["rollout/reward_max"] for x in lines if "rollout/reward_max" in x]


def test_two_gloo_processes_match_one_process(ckpt: Path, tmp_path: Path) -> None:
    # Fine-tuning off: DDP changes BN batch statistics (per-rank sub-batches), so only the
    # search itself is bit-for-bit comparable; the sharded rollouts must be exact.
    off = ["--set", "finetune_steps=0", "--set", "final_finetune_epochs=0"]
    one = _run(ckpt, tmp_path / "one", 1, *off)
    two = _run(ckpt, tmp_path / "two", 2, *off)
    assert [u["kept"] for u in two["units"]] == [u["kept"] for u in one["units"]]
    assert [u["reward_curve"] for u in two["units"]] == [u["reward_curve"] for u in one["units"]]
    assert _rewards(tmp_path / "two") == _rewards(tmp_path / "one")


def test_ddp_fine_tuning_runs_on_two_processes(ckpt: Path, tmp_path: Path) -> None:
    rep = _run(
        ckpt, tmp_path / "ddp", 2, "--set", "finetune_steps=3", "--set", "final_finetune_epochs=0.1"
    )
    # Something must really be cut (``<=`` would hold with nothing pruned), and the model
    # written is the one at the end of the walk.
    assert any(u["channels_after"] < u["channels_before"] for u in rep["units"])
    assert rep["pruned"]["macs"] < rep["baseline"]["macs"]
    assert rep["pruned"]["macs"] == rep["units"][-1]["macs"]
    assert rep["pruned"]["test_acc"] > 50.0
