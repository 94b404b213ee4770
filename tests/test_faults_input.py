"""Bad input: every case is one ``rlprune: error:`` line, a non-zero exit, no traceback, and
nothing half-written; plus models the pruner cannot handle (Python API).

One case per kind runs as a real subprocess; the variations of a kind go through
``rlprune.cli.main`` in-process (same code path, no 2-second interpreter start each).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from rlprune.config import AgentConfig, PruneConfig, RewardConfig, RolloutConfig, load_config
from rlprune.errors import PruningError
from rlprune.pruning import find_units
from rlprune.search import prune
from tests.faultkit import FAST_PRUNE, assert_one_error_line, one_thread, run_cli, run_main
from tests.toy import toy_split

pytestmark = pytest.mark.faults


def _prune(ckpt: Path, out: Path, *extra: str | Path):
    return run_cli(
        "prune", "--checkpoint", ckpt, "--dataset", "digits", "--out", out, "--quiet", *extra
    )


def _train(out: Path, *extra: str | Path):
    return run_cli("train", "--model", "vgg-small", "--width", "0.25", "--out", out, *extra)


def _image_tree(root: Path, classes: int, per_class: int, mode: str = "RGB") -> Path:
    for c in range(classes):
        (root / "train" / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            colour = (40 * c + i) % 256
            img = Image.new(mode, (8, 8), (colour,) * 3 if mode == "RGB" else colour)
            img.save(root / "train" / f"class{c}" / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-acc-drop", "-1"], "max_acc_drop"),
        (["--target-macs", "1"], "target_macs"),
        (["--target-macs", "0"], "target_macs"),
        (["--target-macs", "-0.5"], "target_macs"),
        (["--max-acc-drop", "1", "--target-macs", "0.5"], "choose one mode"),
        (["--max-acc-drop", "1", "--set", "agent.hiden=3"], "agent.hiden"),
        (["--max-acc-drop", "1", "--set", "agent.samples=1"], "agent.samples"),
        (["--max-acc-drop", "1", "--set", "seed=abc"], "seed"),
    ],
    ids=[
        "negative-drop",
        "target-1",
        "target-0",
        "target-negative",
        "both-modes",
        "unknown-set-key",
        "bad-value",
        "bad-type",
    ],
)
def test_invalid_config_names_the_key(
    digits_baseline: Path, tmp_path: Path, capsys, args: list[str], needle: str
) -> None:
    out = tmp_path / "run"
    proc = run_main(
        capsys, "prune", "--checkpoint", digits_baseline, "--dataset", "digits", "--out", out, *args
    )
    assert_one_error_line(proc, needle)
    assert not out.exists()


def test_unknown_key_in_yaml_config(digits_baseline: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "search.yaml"
    cfg.write_text("agent:\n  updates: 4\n  lerning_rate: 0.1\n")
    out = tmp_path / "run"
    proc = _prune(digits_baseline, out, "--max-acc-drop", "1", "--config", cfg)
    assert_one_error_line(proc, "agent.lerning_rate")
    assert not out.exists()


def test_set_accepts_exponent_notation() -> None:
    cfg = load_config(PruneConfig, None, ["finetune_lr=1e-4", "reward.max_acc_drop=5e-1"])
    assert cfg.finetune_lr == 1e-4 and cfg.reward.max_acc_drop == 0.5


# ----------------------------------------------------------------------------- checkpoints / data
def test_checkpoint_of_another_architecture(digits_baseline: Path, tmp_path: Path, capsys) -> None:
    ckpt = torch.load(digits_baseline, weights_only=True)
    ckpt["spec"]["name"] = "resnet20"  # vgg weights, resnet spec
    bad = tmp_path / "resnet.pt"
    torch.save(ckpt, bad)
    out = tmp_path / "run"
    assert_one_error_line(
        _prune(bad, out, "--max-acc-drop", "1"), "does not match the resnet20 architecture"
    )
    assert not out.exists()
    assert_one_error_line(run_main(capsys, "inspect", "--checkpoint", bad), "resnet20")


def test_dataset_with_other_channels(digits_baseline: Path, tmp_path: Path) -> None:
    tree = _image_tree(tmp_path / "rgb", classes=10, per_class=3)
    proc = run_cli(
        "eval", "--checkpoint", digits_baseline, "--dataset", "image-folder", "--data-dir", tree
    )
    assert_one_error_line(proc, "1-channel", "3 channel(s)")


def test_dataset_with_other_classes(digits_baseline: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(
        "prune",
        "--checkpoint",
        digits_baseline,
        "--dataset",
        "synthetic",
        "--out",
        out,
        "--max-acc-drop",
        "1",
        *FAST_PRUNE,
    )
    assert_one_error_line(proc, "10 classes", "4 classes")
    assert not out.exists()


@pytest.mark.parametrize("case", ["empty", "no-images", "one-per-class", "missing"])
def test_unusable_image_folder(tmp_path: Path, capsys, case: str) -> None:
    root = tmp_path / "images"
    needle = {
        "empty": "no class subdirectories",
        "no-images": "no .png/.jpg/.jpeg images",
        "one-per-class": "too few examples",
        "missing": "not a directory",
    }[case]
    if case == "empty":
        root.mkdir()
    elif case == "no-images":
        (root / "train" / "cats").mkdir(parents=True)
        (root / "train" / "cats" / "notes.txt").write_text("not an image")
    elif case == "one-per-class":
        _image_tree(root, classes=3, per_class=1)
    else:
        root = tmp_path / "nonexistent" / "images"
    out = tmp_path / "base"
    args = ("--dataset", "image-folder", "--data-dir", root, "--epochs", "0.1")
    if case == "one-per-class":  # one real process
        proc = _train(out, *args)
    else:
        proc = run_main(capsys, "train", "--model", "vgg-small", "--out", out, *args)
    assert_one_error_line(proc, needle)
    assert not out.exists()


# ----------------------------------------------------------------------------- output folder
def test_output_under_a_regular_file(digits_baseline: Path, tmp_path: Path, capsys) -> None:
    """Fails for root too: nothing can be created below a file."""
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    proc = _prune(digits_baseline, blocker / "run", "--max-acc-drop", "1", *FAST_PRUNE)
    assert_one_error_line(proc, "cannot create run folder", str(blocker / "run"))
    proc = run_main(
        capsys, "train", "--model", "vgg-small", "--out", blocker / "base", "--dataset", "digits"
    )
    assert_one_error_line(proc, "cannot write to", str(blocker / "base"))
    assert "epoch" not in proc.stdout  # refused before training, not after
    assert blocker.read_text() == "I am a file"


def test_read_only_output_folder(digits_baseline: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("x")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("running as root: chmod 0o500 does not stop writes (see the test above)")
        proc = _prune(digits_baseline, ro / "run", "--max-acc-drop", "1", *FAST_PRUNE)
        assert_one_error_line(proc, "cannot create run folder")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


# ----------------------------------------------------------------------------- models (Python API)
class LinearOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.classifier = nn.Linear(64, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.fc1(x.flatten(1))))


class ConvClassifierOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x).mean((2, 3))


class DictInput(nn.Module):
    """Needs ``{"image": x}``: torch-pruning's trace with a plain tensor fails."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.classifier = nn.Conv2d(4, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.conv(batch["image"]).mean((2, 3)))


class _TwoConvs(nn.Module):
    """conv1 (4->8) -> conv2 (8->8) -> linear; subclasses differ in their forward only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.classifier = nn.Linear(8, 4)


class NoAutograd(_TwoConvs):
    """Runs fine, but under no_grad: torch-pruning's autograd trace sees no layer at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


class ChannelShuffle(_TwoConvs):
    """Traces fine, but the forward hard-codes 2 groups of 4 channels: any cut breaks it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = y.view(y.shape[0], 2, 4, *y.shape[2:]).transpose(1, 2).reshape(y.shape)
        return self.classifier(self.conv2(y).mean((2, 3)))


class DataDependentBranch(_TwoConvs):
    """Prunes fine (eager), but torch.export cannot export a data-dependent ``if``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        if y.mean() > 0:
            y = torch.relu(y)
        return self.classifier(self.conv2(y).mean((2, 3)))


def _api_prune(model: nn.Module, out: Path):
    cfg = PruneConfig(
        finetune_steps=2,
        final_finetune_epochs=0,
        latency_runs=3,
        agent=AgentConfig(samples=4, updates=2, patience=1),
        reward=RewardConfig(mode="budget", target_macs=0.5),
        rollout=RolloutConfig(reward_set=20, calib_set=8),
    )
    with one_thread():
        torch.manual_seed(0)
        return prune(model, toy_split(64, 0), toy_split(32, 1), cfg, out_dir=out)


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        (LinearOnly, "no prunable conv"),
        (ConvClassifierOnly, "no prunable conv"),
        (NoAutograd, "did not see the model's convs"),
    ],
)
def test_model_without_prunable_conv(tmp_path: Path, model: type[nn.Module], needle: str) -> None:
    with pytest.raises(PruningError, match=needle):
        _api_prune(model(), tmp_path / "run")


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
def test_untraceable_model_is_a_pruning_error() -> None:
    with pytest.raises(PruningError, match="torch-pruning cannot trace this model"):
        find_units(DictInput(), torch.zeros(1, 4, 4, 4))


def test_unprunable_model_leaves_no_run_folder(tmp_path: Path) -> None:
    with pytest.raises(PruningError, match="no prunable conv"):
        _api_prune(LinearOnly(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_untraced_convs_are_reported_as_a_trace_problem(tmp_path: Path) -> None:
    with pytest.raises(PruningError, match="trace"):
        _api_prune(NoAutograd(), tmp_path / "run")


def test_forward_that_breaks_after_a_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The unit whose cut breaks the forward is left whole with one warning; the rest is pruned.
    with caplog.at_level(logging.WARNING, logger="rlprune"):
        res = _api_prune(ChannelShuffle(), tmp_path / "run")
    assert [u.unit for u in res.units] == ["conv2"]
    assert res.units[0].channels_after < res.units[0].channels_before
    said = [r.getMessage() for r in caplog.records if "conv1 is not pruned" in r.getMessage()]
    assert len(said) == 1 and "forward breaks once it is cut" in said[0]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert list(report["not_pruned"]) == ["conv1"]


def test_unexportable_model_still_finishes(tmp_path: Path) -> None:
    res = _api_prune(DataDependentBranch(), tmp_path / "run")
    assert (tmp_path / "run" / "report.json").is_file()
    assert (tmp_path / "run" / "model.pt").is_file()
    # torch.export cannot capture the data-dependent branch: no (partial) program is left.
    assert not (tmp_path / "run" / "model.pt2").exists()
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert res.units
