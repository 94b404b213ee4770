"""End-to-end: the agent learns to prune exactly the provably useless filters."""

import torch

from rlprune.config import AgentConfig, PruneConfig, RewardConfig, RolloutConfig
from rlprune.search import prune
from tests.toy import ToyNet, toy_split


def test_policy_prunes_exactly_the_zero_filters(tmp_path) -> None:
    torch.manual_seed(0)
    model = ToyNet()
    cfg = PruneConfig(
        finetune_steps=0,
        final_finetune_epochs=0,
        min_keep=1,
        latency_runs=3,
        agent=AgentConfig(samples=12, updates=40, lr=0.05, patience=40, min_entropy=0.0),
        reward=RewardConfig(mode="accuracy", max_acc_drop=1.0),
        rollout=RolloutConfig(reward_set=200, calib_set=64),
    )
    res = prune(
        model,
        toy_split(256, 0),
        toy_split(200, 1),
        cfg,
        test=toy_split(200, 2),
        out_dir=tmp_path / "run",
    )
    (unit,) = res.units
    assert unit["kept"] == [0, 1, 2, 3]
    assert res.pruned["test_acc"] == 100.0
    assert res.pruned["macs"] < res.baseline["macs"]
    # the learned policy itself (not only the best sample) separates the two groups
    assert unit["det_kept"] == [0, 1, 2, 3]
    assert unit["det_acc"] == 100.0
