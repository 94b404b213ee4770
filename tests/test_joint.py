"""The joint strategy: every unit at once, learnt allocation, planted known answers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rlprune.config import JointConfig, PruneConfig, RewardConfig, RolloutConfig
from rlprune.errors import ConfigError
from rlprune.pruning import count_macs_params, find_units, remove_channels
from rlprune.search import prune
from tests.toy import toy_split


class DecoyNet(nn.Module):
    """4-class toy whose useful filters are the SMALL ones.

    Filters 0-3 copy input channel k at weight 0.5 (class k's detector, BN gamma 0.5); filters
    4-7 sum all channels at weight 3 (BN gamma 3), so their activations are equal, and the
    classifier reads them at +20, -20, +20, -20 in every row: their contributions cancel. So L1,
    L2, |gamma|, mean activation and torch-pruning's group magnitude (which adds the
    classifier's input weights) all rank the decoys 4-7 above the detectors: an importance
    prior keeps the wrong half, and only the reward can tell.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, 4, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.classifier.weight.zero_()
            for k in range(4):
                self.conv.weight[k, k] = 0.5
                self.classifier.weight[k, k] = 20.0  # confident: the loss tells as the accuracy
                self.bn.weight[k] = 0.5
            self.conv.weight[4:] = 3.0
            self.bn.weight[4:] = 3.0
            self.classifier.weight[:, 4:] = torch.tensor([20.0, -20.0, 20.0, -20.0])
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


def _half_macs() -> float:
    """MAC fraction of DecoyNet with 4 of its 8 filters kept."""
    model, x = DecoyNet(), toy_split(2, 0).images[:1]
    full = count_macs_params(model, x)[0]
    remove_channels(model, find_units(model, x)[0], torch.tensor([1.0] * 4 + [0.0] * 4), x)
    return count_macs_params(model, x)[0] / full


def _joint_cfg(lr: float, steps: int = 60, signal: str = "loss") -> PruneConfig:
    return PruneConfig(
        strategy="joint",
        finetune_steps=0,
        final_finetune_epochs=0,
        min_keep=1,
        latency_runs=3,
        reward=RewardConfig(mode="budget", target_macs=_half_macs() * 1.001),
        rollout=RolloutConfig(reward_set=200, calib_set=64, batch_size=100),
        joint=JointConfig(
            steps=steps,
            samples=8,
            images=100,
            lr=lr,
            signal=signal,
            train_weights=False,
            init="uniform",
            action="filters",
            train_mask="mode",
            rerank_steps=0,
        ),
    )


def _run(cfg: PruneConfig, out: Path) -> tuple[list[int], float]:
    res = prune(
        DecoyNet(), toy_split(256, 0), toy_split(200, 1), cfg, test=toy_split(200, 2), out_dir=out
    )
    (unit,) = res.units
    return unit.kept, float(res.pruned.test_acc or 0.0)


def _start(cfg: PruneConfig, init: str) -> PruneConfig:
    # From global magnitude's mask with a prior soft enough to sample the far side of the cut
    # (the default temperature, 0.1, keeps the search near its prior: it does not get here).
    joint = dataclasses.replace(cfg.joint, init=init, temperature=1.0)
    return dataclasses.replace(cfg, joint=joint)


@pytest.mark.parametrize(
    ("signal", "init"),
    [("loss", "uniform"), ("accuracy", "uniform"), ("loss", "global-magnitude")],
)
def test_joint_agent_finds_planted_filters_the_prior_misses(
    tmp_path: Path, signal: str, init: str
) -> None:
    kept, acc = _run(_start(_joint_cfg(lr=0.05, signal=signal), init), tmp_path / "learn")
    assert kept == [0, 1, 2, 3]
    assert acc == 100.0


@pytest.mark.parametrize("init", ["uniform", "global-magnitude"])
def test_prior_alone_keeps_the_decoys(tmp_path: Path, init: str) -> None:
    # Learning switched off (a vanishing step size): the projection of the prior's logits.
    kept, acc = _run(_start(_joint_cfg(lr=1e-12), init), tmp_path / "prior")
    assert kept == [4, 5, 6, 7]
    assert acc <= 25.0


def test_joint_lands_on_the_mac_target_with_learnt_allocation(tmp_path: Path) -> None:
    from tests.test_search_pin import TwoUnitToy

    cfg = _joint_cfg(lr=0.05, steps=20)
    res = prune(
        TwoUnitToy(), toy_split(256, 0), toy_split(200, 1), cfg, test=toy_split(200, 2),
        out_dir=tmp_path / "two",
    )  # fmt: skip
    ratio = res.pruned.macs / res.baseline.macs
    assert ratio <= cfg.reward.target_macs * 1.02
    assert [u.unit for u in res.units] == ["conv1", "conv2"]
    assert all(u.chosen == "joint" and u.updates == 20 for u in res.units)
    report = (tmp_path / "two" / "report.md").read_text()
    start, end = res.units[0].det_reward_start, res.units[0].det_reward
    assert start is not None and f"{start:.3f} → {end:.3f}" in report


def test_joint_needs_a_mac_target() -> None:
    with pytest.raises(ConfigError, match="joint needs a MAC target"):
        PruneConfig(strategy="joint")


def test_training_under_a_mask_leaves_masked_bn_statistics_alone() -> None:
    from rlprune.env import JointEnv

    model, data = DecoyNet(), toy_split(64, 0)
    cfg = _joint_cfg(lr=0.05)
    env = JointEnv(
        model, (data.images, data.labels), (data.images, data.labels), data.images[:1], cfg, 1
    )
    before_mean, before_var = model.bn.running_mean.clone(), model.bn.running_var.clone()
    mask = torch.tensor([1.0, 0.0] * 4)  # odd channels masked
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    env.train_step(mask, data.images, data.labels, opt)
    assert torch.equal(model.bn.running_var[1::2], before_var[1::2])
    assert torch.equal(model.bn.running_mean[1::2], before_mean[1::2])
    assert not torch.equal(model.bn.running_mean[0::2], before_mean[0::2])  # kept ones learn
    assert not model.training
    env.close()


def test_levels_start_at_the_requested_allocation() -> None:
    from rlprune.env import JointEnv
    from rlprune.env.joint import initial_levels
    from tests.test_search_pin import TwoUnitToy

    model, data = TwoUnitToy(), toy_split(64, 0)
    cfg = _joint_cfg(lr=0.05)
    env = JointEnv(
        model, (data.images, data.labels), (data.images, data.labels), data.images[:1], cfg, 1
    )
    logits = torch.linspace(-2.0, 2.0, env.n_filters)
    for ratios in ([0.25, 0.75], None):
        levels = initial_levels(env, logits, ratios)
        parts = zip(env.split(logits), levels, strict=True)
        keep = [float(torch.sigmoid(p + lv).mean()) for p, lv in parts]
        if ratios is not None:
            assert keep == pytest.approx(ratios, abs=1e-4)
        else:  # uniform: equal ratios whose expected MACs sit on the target
            assert keep[0] == pytest.approx(keep[1], abs=1e-4)
    env.close()


def test_joint_can_start_from_global_magnitude(tmp_path: Path) -> None:
    cfg = _joint_cfg(lr=0.05, steps=4)
    cfg = dataclasses.replace(cfg, joint=dataclasses.replace(cfg.joint, init="global-magnitude"))
    res = prune(
        DecoyNet(), toy_split(256, 0), toy_split(200, 1), cfg, test=toy_split(200, 2),
        out_dir=tmp_path / "gm",
    )  # fmt: skip
    assert res.pruned.macs / res.baseline.macs <= cfg.reward.target_macs * 1.02


def _decoy_env(cfg: PruneConfig, n: int = 200) -> tuple[object, object]:
    from rlprune.env import JointEnv

    model, val = DecoyNet(), toy_split(n, 1)
    reward = val.subset(cfg.rollout.reward_set, seed=cfg.seed)
    env = JointEnv(
        model, (reward.images, reward.labels), (val.images, val.labels), val.images[:1], cfg, 1
    )
    return env, SimpleNamespace(val=val, cfg=cfg)


def test_held_out_images_are_the_validation_split_outside_the_reward_set() -> None:
    from rlprune.search.choice import held_out

    cfg = _joint_cfg(lr=0.05)  # reward set: 200 images
    env, session = _decoy_env(cfg, n=300)
    x, y = held_out(session, env)  # type: ignore[arg-type]
    assert len(y) == 100
    flat = {tuple(r.tolist()) for r in x.flatten(1)}
    assert not flat & {tuple(r.tolist()) for r in env.reward_x.flatten(1)}  # type: ignore[attr-defined]
    assert len(flat | {tuple(r.tolist()) for r in env.reward_x.flatten(1)}) == 300  # type: ignore[attr-defined]
    env.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("learnt_is_right", [True, False])
def test_the_learnt_mask_replaces_the_start_only_if_better_on_held_out(
    learnt_is_right: bool,
) -> None:
    from rlprune.search.choice import choose

    env, session = _decoy_env(_joint_cfg(lr=0.05), n=400)
    right, wrong = torch.tensor([1.0] * 4 + [0.0] * 4), torch.tensor([0.0] * 4 + [1.0] * 4)
    start, learnt = (wrong, right) if learnt_is_right else (right, wrong)
    got = choose(session, env, start, learnt)  # type: ignore[arg-type]
    assert torch.equal(got.mask, right)
    assert got.chosen == ("joint" if learnt_is_right else "prior")
    env.close()  # type: ignore[attr-defined]


class _RandomTwoConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU layers (16 filters each) with seeded random weights."""

    def __init__(self) -> None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        super().__init__(
            nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
        )  # fmt: skip
        torch.random.set_rng_state(gen_state)
        self.eval()


def test_global_magnitude_start_is_that_heuristics_mask() -> None:
    from rlprune.baselines import prune_to_target
    from rlprune.env import JointEnv
    from rlprune.pruning import group_magnitude
    from rlprune.search.joint import start_point

    cfg = _joint_cfg(lr=0.05)
    cfg = dataclasses.replace(
        cfg,
        reward=dataclasses.replace(cfg.reward, target_macs=0.55),
        joint=dataclasses.replace(cfg.joint, init="global-magnitude"),
    )
    model, data = _RandomTwoConv(), toy_split(64, 0)
    x = data.images[:1]
    env = JointEnv(model, (data.images, data.labels), (data.images, data.labels), x, cfg, 1)
    start = start_point(SimpleNamespace(model=model, example=x, cfg=cfg), env)  # type: ignore[arg-type]
    scores = group_magnitude(model, env.units, x)
    counts = prune_to_target(_RandomTwoConv(), "global-magnitude", 0.55, x, min_keep=1)
    assert start.mask is not None and start.prior is not None
    for u, mask, prior in zip(
        env.units, env.split(start.mask), env.split(start.prior), strict=True
    ):
        expect = torch.zeros(u.channels)
        expect[torch.topk(scores[u.name], counts[u.name]).indices] = 1.0
        assert torch.equal(mask, expect), u.name
        assert torch.equal(prior > 0, expect > 0), u.name  # the prior's own decision is its mask
        assert start.ratios is not None
    assert start.ratios == [counts[u.name] / u.channels for u in env.units]
    env.close()


def test_joint_fine_tunes_once_with_the_whole_remaining_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlprune.search.runtime import SearchRuntime

    calls: list[tuple[int, int]] = []
    real = SearchRuntime.tune

    def spy(self: SearchRuntime, model: nn.Module, seed: int, steps: int, desc: str) -> dict:
        calls.append((seed, steps))
        return real(self, model, seed, steps, desc)

    monkeypatch.setattr(SearchRuntime, "tune", spy)
    cfg = _joint_cfg(lr=0.05, steps=4)
    cfg = dataclasses.replace(
        cfg, seed=3, finetune_steps=5, final_finetune_epochs=1.0, batch_size=64,
        joint=dataclasses.replace(cfg.joint, train_weights=True),
    )  # fmt: skip
    prune(
        DecoyNet(), toy_split(256, 0), toy_split(200, 1), cfg, test=toy_split(200, 2),
        out_dir=tmp_path / "ft",
    )  # fmt: skip
    # 5 steps x 1 unit, 4 of them spent under masks, + one epoch of 256 images at batch 64
    assert calls == [(3, 5 - 4 + 4)]


def test_masked_bn_statistics_stay_put_on_concat_slices() -> None:
    # DenseNet-style block: a BN over a concatenation holds each unit's channels at an offset.
    from rlprune.env import JointEnv
    from tests import zoo

    model, x = zoo.build("dense"), zoo.example()
    y = torch.randint(0, 4, (len(x),))
    cfg = dataclasses.replace(_joint_cfg(lr=0.05), reward=RewardConfig("budget", target_macs=0.5))
    env = JointEnv(model, (x, y), (x, y), x[:1], cfg, 1)
    mask = (torch.arange(env.n_filters) % 2).float()  # every other filter masked
    mods = dict(model.named_modules())
    before = {n: m.running_var.clone() for n, m in mods.items() if isinstance(m, nn.BatchNorm2d)}
    env.train_step(mask, x, y, torch.optim.SGD(model.parameters(), lr=0.01))
    checked = 0
    for unit, part in zip(env.units, env.split(mask), strict=True):
        for name in unit.producers:
            if name in before:
                local, owner = unit.index(name)
                dropped = [c for c, u in zip(local, owner, strict=True) if part[u] == 0]
                assert torch.equal(mods[name].running_var[dropped], before[name][dropped]), name
                checked += int(local != list(range(unit.channels)))
    assert checked >= 1  # at least one BN sees its unit at an offset
    env.close()
