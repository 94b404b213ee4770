"""The walk's decisions are pinned: the same seed gives the same masks as the search did before
its loop was split into typed steps (values recorded from that version of the code).

The toy's accuracies have wide margins (planted detector filters), so rewards do not depend on
the CPU's rounding and the pinned masks hold on any x86-64 machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune.config import AgentConfig, PruneConfig, RewardConfig, RolloutConfig
from rlprune.search import prune
from tests.toy import toy_split


class TwoUnitToy(nn.Module):
    """conv1: filters 0-3 copy input channel k, 4-7 are zero; conv2: filter k reads conv1's
    channel k (filters 4-7 read the zero channels at half weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, 4, bias=False)
        with torch.no_grad():
            for w in (self.conv1.weight, self.conv2.weight, self.classifier.weight):
                w.zero_()
            for k in range(4):
                self.conv1.weight[k, k] = 1.0
                self.conv2.weight[k, k] = 1.0
                self.classifier.weight[k, k] = 1.0
            for k in range(4, 8):
                self.conv2.weight[k, k] = 0.5
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


# unit -> (kept, det_kept, chosen, updates, rollouts scored, mean reward per update)
PINNED = {
    "accuracy": {
        "conv1": (
            list(range(8)),
            [2, 3],
            "reverted",
            5,
            8,
            [0.419, 0.468, 0.5205, 0.5517, -40.1552],
        ),
        "conv2": ([0, 1, 2, 3], [0, 1, 2, 3], "best", 4, 5, [0.3395, 0.3756, -4.3183, 0.3947]),
    },
    "budget": {
        "conv1": ([0, 1, 2, 3], [0, 1, 2, 3], "best", 4, 6, [-10.1503, -5.2543, 0.0, -0.624]),
        "conv2": ([0, 1, 2, 3], [0, 1, 2, 3], "best", 3, 5, [-4.2737, -2.1368, -3.157]),
    },
}


@pytest.mark.parametrize("mode", ["accuracy", "budget"])
def test_same_seed_gives_the_pinned_masks(tmp_path: Path, mode: str) -> None:
    torch.manual_seed(0)
    if mode == "accuracy":
        reward = RewardConfig(mode="accuracy", max_acc_drop=1.0)
    else:
        reward = RewardConfig(mode="budget", target_macs=0.4)
    cfg = PruneConfig(
        seed=3,
        strategy="layerwise",  # the masks pinned are the layer-wise walk's
        finetune_steps=2,
        final_finetune_epochs=0,
        min_keep=1,
        latency_runs=3,
        batch_size=32,
        agent=AgentConfig(samples=6, updates=5, patience=3),
        reward=reward,
        rollout=RolloutConfig(reward_set=100, calib_set=32),
    )
    res = prune(
        TwoUnitToy(),
        toy_split(128, 0),
        toy_split(100, 1),
        cfg,
        test=toy_split(100, 2),
        out_dir=tmp_path / "run",
    )
    got = {
        u.unit: (
            u.kept,
            u.det_kept,
            u.chosen,
            u.updates,
            u.rollouts_scored,
            u.reward_curve,
        )
        for u in res.units
    }
    assert set(got) == set(PINNED[mode])
    for name, (kept, det_kept, chosen, updates, scored, curve) in PINNED[mode].items():
        g = got[name]
        assert g[:5] == (kept, det_kept, chosen, updates, scored), name
        assert g[5] == pytest.approx(curve, abs=1e-3), name
