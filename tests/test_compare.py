"""``run_compare`` end to end on digits: every method, matched MACs, equal fine-tune budget."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from rlprune.checkpoint import save_checkpoint
from rlprune.compare import METHODS, run_compare
from rlprune.config import TrainConfig
from rlprune.data import load_dataset
from rlprune.errors import ConfigError
from rlprune.models import ModelSpec
from rlprune.train import train

TINY = [
    "agent.updates=2",
    "agent.samples=4",
    "finetune_steps=2",
    "final_finetune_epochs=0.05",
    "rollout.reward_set=100",
    "latency_runs=3",
]
MAC_TARGETED = ("l1-uniform", "global-magnitude", "taylor", "bn-scale")


def _args(checkpoint: Path, out: Path, **kw: Any) -> argparse.Namespace:
    ns = {
        "checkpoint": str(checkpoint),
        "dataset": "digits",
        "data_dir": None,
        "download": False,
        "max_train": None,
        "out": str(out),
        "targets": "0.5",
        "seeds": 1,
        "methods": None,
        "config": None,
        "set": list(TINY),
        "device": "cpu",
        "quiet": True,
    }
    ns.update(kw)
    return argparse.Namespace(**ns)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, _one_thread: None) -> Path:
    torch.manual_seed(0)
    data = load_dataset("digits")
    spec = ModelSpec("vgg-small", 1, 10, data.input_size, 0.25)
    model = spec.build()
    train(model, data, TrainConfig(epochs=2, seed=0), progress=False)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "model.pt", model, spec)


@pytest.fixture(scope="module")
def full_run(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("compare")
    return out, run_compare(_args(checkpoint, out))


def test_every_method_runs_with_matched_macs(full_run: tuple[Path, str]) -> None:
    out, text = full_run
    report = json.loads((out / "compare.json").read_text())
    assert list(report["results"]) == list(METHODS)
    for method, per_target in report["results"].items():
        r = per_target["0.5"]
        assert len(r["seeds"]) == 1 and r["test_acc_std"] == 0.0
        assert 0 <= r["test_acc_mean"] <= 100 and r["params"] > 0 and r["latency_b64_ms"] > 0
        assert r["macs_ratio"] == pytest.approx(r["macs"] / report["baseline"]["macs"])
        if method in MAC_TARGETED:
            assert abs(r["macs_ratio"] / 0.5 - 1) <= 0.02 and r["macs_within_tolerance"]
    # random and l1-rl-ratios use exactly the per-unit counts the agent chose
    rl_kept = report["results"]["rl"]["0.5"]["seeds"][0]["kept"]
    for method in ("random", "l1-rl-ratios"):
        assert report["results"][method]["0.5"]["seeds"][0]["kept"] == rl_kept
        ratio = report["results"][method]["0.5"]["macs_ratio"]
        assert ratio == pytest.approx(report["results"]["rl"]["0.5"]["macs_ratio"])
    assert (out / "rl" / "t0.5_s0" / "report.json").is_file()
    assert "| taylor | 0.5 |" in text


def test_every_method_gets_the_rl_fine_tune_budget(full_run: tuple[Path, str]) -> None:
    out, _ = full_run
    report = json.loads((out / "compare.json").read_text())
    train_n = len(load_dataset("digits").train)
    expected = 2 * report["n_units"] + round(0.05 * math.ceil(train_n / 128))
    assert report["n_units"] == 6 and report["finetune_steps"] == expected
    for method in METHODS[1:]:
        assert report["results"][method]["0.5"]["seeds"][0]["finetune_steps"] == expected


def test_markdown_and_plot_are_written(full_run: tuple[Path, str]) -> None:
    out, text = full_run
    md = (out / "compare.md").read_text()
    assert md == text
    assert "| method | target | test acc (mean ± std) |" in md
    assert "rlprune compare --checkpoint" in md and "--set agent.updates=2" in md
    assert "CPUs" in md and f"torch {torch.__version__}" in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_targets_and_seeds(checkpoint: Path, tmp_path: Path) -> None:
    args = _args(checkpoint, tmp_path, methods="l1-uniform,bn-scale", targets="0.5,0.3", seeds=2)
    run_compare(args)
    report = json.loads((tmp_path / "compare.json").read_text())
    assert list(report["results"]) == ["l1-uniform", "bn-scale"]
    for per_target in report["results"].values():
        assert set(per_target) == {"0.5", "0.3"}
        for key, r in per_target.items():
            assert [s["seed"] for s in r["seeds"]] == [0, 1]
            assert abs(r["macs_ratio"] / float(key) - 1) <= 0.02
            accs = [s["test_acc"] for s in r["seeds"]]
            assert r["test_acc_std"] == pytest.approx(statistics.stdev(accs))
    assert not (tmp_path / "rl").exists()
    assert (tmp_path / "pareto.png").is_file()


def test_bad_arguments_raise_config_error(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid: rl, random"):
        run_compare(_args(checkpoint, tmp_path, methods="rl,magic"))
    with pytest.raises(ConfigError, match="targets"):
        run_compare(_args(checkpoint, tmp_path, targets="0.5,1.5"))
    with pytest.raises(ConfigError, match="seeds"):
        run_compare(_args(checkpoint, tmp_path, seeds=0))
