"""Numeric faults: NaN/inf while (fine-)tuning, and units that no mask can prune safely."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune.config import AgentConfig, PruneConfig, RewardConfig, RolloutConfig, TrainConfig
from rlprune.data import load_dataset
from rlprune.errors import RlpruneError
from rlprune.search import prune
from rlprune.train import fine_tune, train
from tests.faultkit import one_thread
from tests.toy import toy_split

pytestmark = pytest.mark.faults


class Poisoned(nn.Module):
    """Wraps a model; the forward calls numbered in ``bad`` return non-finite logits.

    ``seen[i]`` is a copy of the first conv weight as call ``i`` found it (what a rollback
    must restore).
    """

    def __init__(self, inner: nn.Module, bad: set[int] | None, value: float = float("nan")):
        super().__init__()
        self.inner, self.bad, self.value = inner, bad, value
        self.calls = 0
        self.seen: dict[int, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, self.calls = self.calls, self.calls + 1
        self.seen[i] = self.inner.conv.weight.detach().clone()
        out = self.inner(x)
        if self.bad is None or i in self.bad:
            return out + self.value  # NaN or inf logits: a non-finite loss
        return out


class SmallNet(nn.Module):
    def __init__(self, in_channels: int = 4, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_rolls_back_lowers_lr_and_continues(
    value: float, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    model = Poisoned(SmallNet(), bad={3}, value=value)  # 3 good SGD steps, then a bad loss
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="rlprune.train"):
        out = fine_tune(model, toy_split(64, 0), steps=6, lr=0.1, batch_size=16)
    assert out["retries"] == 1 and out["lr"] == pytest.approx(0.05)
    assert any("non-finite loss" in r.getMessage() for r in caplog.records)
    assert model.calls == 4 + 6  # the bad attempt, then a full one
    assert not torch.equal(model.seen[3], start["inner.conv.weight"])  # it had moved...
    assert torch.equal(model.seen[4], start["inner.conv.weight"])  # ...and was rolled back
    assert all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )
    assert not torch.equal(model.state_dict()["inner.conv.weight"], start["inner.conv.weight"])


def test_fine_tune_that_always_diverges_raises_and_leaves_model_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    model = Poisoned(SmallNet(), bad=None)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with (
        caplog.at_level(logging.WARNING, logger="rlprune.train"),
        pytest.raises(RlpruneError, match="diverged 4 times"),
    ):
        fine_tune(model, toy_split(64, 0), steps=5, lr=0.1, batch_size=16, max_retries=3)
    warnings = [r for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(warnings) == 4
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_training_divergence_is_a_clear_error() -> None:
    torch.manual_seed(0)
    data = load_dataset("synthetic")
    model = Poisoned(SmallNet(in_channels=1), bad={2})
    with pytest.raises(RlpruneError, match=r"training diverged .* at step 2; lower --lr"):
        train(model, data, TrainConfig(epochs=0.5, batch_size=64), progress=False)


class AllEssential(nn.Module):
    """4 classes, two 1x1 conv units of 4 filters; filter k of each carries class k.

    Class k images have channel k bright, so removing ANY filter misclassifies a whole class
    (a 25 pp drop): no mask is within a 1 pp bound.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            for m in (self.conv1, self.conv2):
                m.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            self.classifier.weight.copy_(torch.eye(4))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def test_unit_whose_every_mask_collapses_is_kept_whole(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = PruneConfig(
        finetune_steps=0,
        final_finetune_epochs=0,
        min_keep=1,
        latency_runs=3,
        agent=AgentConfig(samples=6, updates=4, patience=4),
        reward=RewardConfig(mode="accuracy", max_acc_drop=1.0),
        rollout=RolloutConfig(reward_set=100, calib_set=32),
    )
    res = prune(
        AllEssential(),
        toy_split(128, 0),
        toy_split(100, 1),
        cfg,
        test=toy_split(100, 2),
        out_dir=tmp_path / "run",
    )
    assert [u.unit for u in res.units] == ["conv1", "conv2"]
    for u in res.units:
        assert u.chosen in ("unpruned", "reverted"), u
        assert u.channels_after == u.channels_before == 4
        assert u.kept == [0, 1, 2, 3]
    assert res.pruned.test_acc == res.baseline.test_acc == 100.0
    assert res.pruned.macs == res.baseline.macs
