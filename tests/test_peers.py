"""Peer methods of rlprune.peers: MAC targets, equal fine-tune budget, seeded search, known answer.

Models are tiny zoo nets with random weights and randomised BN statistics on random 16x16
images; MACs are always checked on an exact torch-pruning count of the returned model.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Any

import pytest
import torch
import torch_pruning as tp
from torch import nn

from rlprune.config import PruneConfig, RolloutConfig
from rlprune.data import Split
from rlprune.errors import ConfigError, PruningError
from rlprune.peers import common, eagleeye, random_search, tp_iterative
from rlprune.pruning import count_macs_params, find_units, remove_channels
from tests.test_baselines import _model as baseline_model

G = torch.Generator().manual_seed(0)
TRAIN = Split(torch.randn(32, 1, 16, 16, generator=G), torch.arange(32) % 10)
VAL = Split(torch.randn(40, 1, 16, 16, generator=G), torch.arange(40) % 10)
X = TRAIN.images[:1]
CFG = PruneConfig(
    finetune_steps=1,
    final_finetune_epochs=1.0,  # ceil(32 / 32) = 1 step
    batch_size=32,
    rollout=RolloutConfig(reward_set=40, calib_set=16, batch_size=64),
)


def _model(name: str, seed: int = 0) -> nn.Module:
    """A width-0.25 zoo model with randomised BN statistics (the baselines tests' helper)."""
    return baseline_model(name, 0.25, seed)


def _budget(model: nn.Module, cfg: PruneConfig = CFG) -> int:
    return cfg.finetune_steps * len(find_units(model, X)) + 1


def _ratio(pruned: nn.Module, base: nn.Module) -> float:
    return count_macs_params(pruned, X)[0] / count_macs_params(base, X)[0]


def _spy_fine_tune(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, dict[str, Any]]]:
    calls: list[tuple[int, dict[str, Any]]] = []
    real = common.fine_tune

    def spy(model: nn.Module, split: Split, steps: int, lr: float, **kw: Any) -> dict[str, float]:
        calls.append((steps, {"lr": lr, "split": split, **kw}))
        return real(model, split, steps, lr, **kw)

    monkeypatch.setattr(common, "fine_tune", spy)
    return calls


@pytest.mark.parametrize("name", ["vgg-small", "resnet20"])
def test_tp_iterative_hits_the_target_on_the_rl_schedule(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _model(name)
    before = copy.deepcopy(base.state_dict())
    pruned_by: list[nn.Module] = []
    real_step = tp.pruner.BasePruner.step

    def step(self: tp.pruner.BasePruner, interactive: bool = False) -> Any:
        pruned_by.append(self.model)
        return real_step(self, interactive)

    monkeypatch.setattr(tp.pruner.BasePruner, "step", step)
    tuned = _spy_fine_tune(monkeypatch)
    n, ft = len(find_units(base, X)), _budget(base)
    res = tp_iterative(base, TRAIN, CFG, 0.5, ft)
    assert abs(_ratio(res.model, base) / 0.5 - 1) <= 0.02
    assert abs(res.macs_ratio - _ratio(res.model, base)) < 1e-9
    # n_units steps of the real pruner (the bisection's dry runs prune copies)
    assert sum(m is res.model for m in pruned_by) == n
    assert [s for s, _ in tuned] == [CFG.finetune_steps] * n + [1]
    assert res.finetune_steps == ft == sum(s for s, _ in tuned)
    for _, kw in tuned:
        assert kw["lr"] == CFG.finetune_lr and kw["batch_size"] == CFG.batch_size
        assert kw["weight_decay"] == CFG.weight_decay and kw["split"] is TRAIN
    mods = dict(res.model.named_modules())
    assert res.kept == {u.name: u.channels for u in find_units(res.model, X)}
    assert res.kept == {k: mods[k].out_channels for k in res.kept}
    assert set(res.ratios) == set(res.kept) and res.dry_runs >= 1
    assert res.search_s > 0 and res.finetune_s > 0
    assert res.model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # untouched


def test_tp_iterative_respects_min_keep_and_the_budget() -> None:
    base = _model("vgg-small")
    cfg = dataclasses.replace(CFG, min_keep=3)
    res = tp_iterative(base, TRAIN, cfg, 0.5, _budget(base))
    assert min(res.kept.values()) >= 3
    with pytest.raises(PruningError):  # half the channels everywhere cannot reach 5% of MACs
        tp_iterative(base, TRAIN, dataclasses.replace(CFG, min_keep=0.5), 0.05, 7)
    with pytest.raises(ConfigError):  # not finetune_steps * n_units + final steps
        tp_iterative(base, TRAIN, CFG, 0.5, _budget(base) + 1)


def _spy_scorer(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], float]]:
    scored: list[tuple[list[int], float]] = []
    real = eagleeye.CandidateScorer.accuracy

    def spy(self: eagleeye.CandidateScorer, net: nn.Module) -> float:
        acc = real(self, net)
        mods = dict(net.named_modules())
        scored.append(([mods[u.name].out_channels for u in self.units], acc))
        return acc

    monkeypatch.setattr(eagleeye.CandidateScorer, "accuracy", spy)
    return scored


def test_random_search_scores_n_candidates_and_keeps_the_best(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = _model("resnet20")
    scored = _spy_scorer(monkeypatch)
    tuned = _spy_fine_tune(monkeypatch)
    ft = _budget(base)
    res = random_search(base, TRAIN, VAL, CFG, 0.5, ft, n_candidates=6)
    assert abs(_ratio(res.model, base) / 0.5 - 1) <= 0.02
    assert len(scored) == res.candidates == 6
    accs = [a for _, a in scored]
    best = accs.index(max(accs))  # the first of any tie
    assert res.best_reward_acc == max(accs)
    assert list(res.kept.values()) == scored[best][0]
    assert res.kept == {u.name: u.channels for u in find_units(res.model, X)}
    assert [s for s, _ in tuned] == [ft] and res.finetune_steps == ft  # one call, whole budget
    assert len({tuple(c) for c, _ in scored}) > 1  # the allocations are random


def test_random_search_is_seeded_and_never_sees_a_test_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[torch.Tensor] = []
    real_init = eagleeye.CandidateScorer.__init__

    def init(
        self: eagleeye.CandidateScorer, model: nn.Module, units: Any, reward: Any, *a: Any
    ) -> None:
        seen.append(reward[0])
        real_init(self, model, units, reward, *a)

    monkeypatch.setattr(eagleeye.CandidateScorer, "__init__", init)
    base = _model("vgg-small")
    runs = [random_search(base, TRAIN, VAL, CFG, 0.4, 0, 4) for _ in range(2)]
    other = random_search(base, TRAIN, VAL, dataclasses.replace(CFG, seed=1), 0.4, 0, 4)
    assert runs[0].kept == runs[1].kept and runs[0].best_reward_acc == runs[1].best_reward_acc
    sd0, sd1 = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert other.kept != runs[0].kept
    assert not {"test", "data", "splits"} & set(inspect.signature(random_search).parameters)
    reward = VAL.subset(CFG.rollout.reward_set, seed=CFG.seed).images  # the RL search's set
    assert len(seen) == 3 and all(torch.equal(x, reward) for x in seen[:2])


class TwoUnitNet(nn.Module):
    """4-class toy with two units where only one allocation is harmless.

    Unit ``conv_a`` (4 -> 8): filters 0-3 copy input channel k (class k's detector), 4-7 are
    zero. Unit ``conv_b`` (8 -> 8): filters 0-3 copy a's channel k and are what the classifier
    reads; 4-7 are decoys with three times the weight that the classifier ignores, so
    smallest-L1 removal in b cuts useful filters first. Pruning a's 4 zero filters costs nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(4, 8, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 8, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, 4, bias=False)
        with torch.no_grad():
            for w in (self.conv_a.weight, self.conv_b.weight, self.classifier.weight):
                w.zero_()
            for k in range(4):
                self.conv_a.weight[k, k] = 1.0
                self.conv_b.weight[k, k] = 1.0
                self.conv_b.weight[4 + k, k] = 3.0
                self.classifier.weight[k, k] = 1.0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn_a(self.conv_a(x)))
        h = torch.relu(self.bn_b(self.conv_b(h)))
        return self.classifier(h.mean((2, 3)))


def _toy_split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.rand(n, 4, 4, 4, generator=g) * 0.1
    x[torch.arange(n), y] += 1.0
    return Split(x, y)


def test_random_search_finds_the_planted_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    model = TwoUnitNet()
    train, val = _toy_split(64, 0), _toy_split(40, 1)
    x = val.images[:1]
    probe = copy.deepcopy(model)
    remove_channels(probe, find_units(probe, x)[0], torch.tensor([1.0] * 4 + [0.0] * 4), x)
    target = count_macs_params(probe, x)[0] / count_macs_params(model, x)[0]
    # pruned fractions (a, b): mostly b, only a (the answer), both
    draws = iter([[0.1, 0.9], [0.9, 0.01], [0.5, 0.5]])
    monkeypatch.setattr(
        eagleeye, "sample_fractions", lambda g, n: torch.tensor(next(draws), dtype=torch.float64)
    )
    scored = _spy_scorer(monkeypatch)
    cfg = PruneConfig(min_keep=1, final_finetune_epochs=0, finetune_steps=0, **_toy_rollout())
    res = random_search(model, train, val, cfg, target, 0, n_candidates=3)
    assert res.kept == {"conv_a": 4, "conv_b": 8}
    assert [a for _, a in scored][1] == res.best_reward_acc == 100.0
    assert max(scored[0][1], scored[2][1]) < 100.0
    assert (res.model(val.images).argmax(1) == val.labels).all()
    assert abs(res.macs_ratio / target - 1) < 1e-9


def _toy_rollout() -> dict[str, Any]:
    return {"rollout": RolloutConfig(reward_set=40, calib_set=32), "batch_size": 32}
