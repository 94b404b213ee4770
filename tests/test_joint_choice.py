"""The joint strategy's allocation policy and its fair final choice (known answers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlprune.agent.allocation import AllocationAgent
from rlprune.config import JointConfig
from rlprune.errors import ConfigError
from rlprune.pruning import count_macs_params
from rlprune.train import fine_tune
from tests.test_joint import _joint_cfg, _RandomTwoConv
from tests.toy import toy_split


def test_gaussian_reinforce_finds_a_known_optimum() -> None:
    # reward -|a - a*|^2: the mean must walk from 0 to a* (REINFORCE on the Gaussian policy).
    best = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    agent = AllocationAgent(torch.zeros(3), sigma=0.3, lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        a = agent.sample(8, gen)
        agent.update(a, -((a - best) ** 2).sum(1))
    assert torch.allclose(agent.mu.detach(), best, atol=0.15)
    state = agent.state_dict()
    other = AllocationAgent(torch.zeros(3), sigma=0.3, lr=0.05)
    other.load_state_dict(state)
    assert torch.equal(other.mu.detach(), agent.mu.detach())


def _env(target: float = 0.55):  # type: ignore[no-untyped-def]
    from rlprune.env import JointEnv
    from rlprune.search.joint import start_point

    cfg = _joint_cfg(lr=0.05)
    cfg = dataclasses.replace(
        cfg,
        reward=dataclasses.replace(cfg.reward, target_macs=target),
        joint=dataclasses.replace(cfg.joint, init="global-magnitude"),
    )
    model, data = _RandomTwoConv(), toy_split(64, 0)
    x = data.images[:1]
    base = count_macs_params(model, x)[0]
    env = JointEnv(model, (data.images, data.labels), (data.images, data.labels), x, cfg, base)
    return env, start_point(SimpleNamespace(model=model, example=x, cfg=cfg), env)  # type: ignore[arg-type]


def test_allocation_masks_start_on_the_heuristic_mask_and_project_onto_the_target() -> None:
    from rlprune.env.joint import Allocation

    env, start = _env()
    assert start.prior is not None and start.ratios is not None and start.mask is not None
    alloc = Allocation(env, start.prior)
    mu = torch.logit(torch.tensor(start.ratios, dtype=torch.float64))
    assert torch.equal(alloc.masks(mu[None])[0], start.mask)
    # counts are round(sigmoid(a) * C), at least min_keep, filters by the prior's ranking
    masks = alloc.masks(torch.tensor([[0.0, -30.0], [30.0, 0.0]], dtype=torch.float64))
    assert env.counts(masks).tolist() == [[8.0, 1.0], [16.0, 8.0]]
    order = torch.argsort(env.split(start.prior)[0], descending=True)
    assert torch.equal(masks[0, :16].nonzero().flatten().sort().values, order[:8].sort().values)
    projected = alloc.project(torch.zeros(2, dtype=torch.float64))
    assert float(env.macs(projected[None])[0]) <= env.target
    counts = env.counts(projected[None])[0]
    assert counts[0] == counts[1]  # a common shift of equal means keeps equal counts
    env.close()


def test_allocation_needs_the_heuristic_start() -> None:
    with pytest.raises(ConfigError, match="joint.action"):
        JointConfig(action="allocation", init="uniform")


def _session(env: object, steps: int) -> SimpleNamespace:
    cfg = dataclasses.replace(
        env.cfg,  # type: ignore[attr-defined]
        finetune_lr=0.05, batch_size=32,
        joint=dataclasses.replace(env.cfg.joint, rerank_steps=steps),  # type: ignore[attr-defined]
    )  # fmt: skip
    train = toy_split(256, 0)

    def tune(model: torch.nn.Module, seed: int, n: int, desc: str) -> dict[str, float]:
        gen = torch.Generator().manual_seed(seed)  # what SearchRuntime.tune does in one process
        return fine_tune(model, train, n, cfg.finetune_lr, batch_size=32, generator=gen)

    runtime = SimpleNamespace(train=train, hflip=False, tune=tune)
    return SimpleNamespace(cfg=cfg, val=toy_split(400, 1), runtime=runtime, model=env.model)  # type: ignore[attr-defined]


@pytest.mark.parametrize("learnt_is_right", [True, False])
def test_rerank_keeps_the_mask_better_after_recovery_and_restores_the_weights(
    learnt_is_right: bool,
) -> None:
    from rlprune.search.choice import rerank
    from tests.test_joint import _decoy_env

    env, _ = _decoy_env(_joint_cfg(lr=0.05), n=400)
    session = _session(env, steps=3)
    model = env.model  # type: ignore[attr-defined]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # the episodes' weights: ruined, so only the restore can give them back
        model.conv.weight.mul_(-1.0)
    right, wrong = torch.tensor([1.0] * 4 + [0.0] * 4), torch.tensor([0.0] * 4 + [1.0] * 4)
    start, learnt = (wrong, right) if learnt_is_right else (right, wrong)
    got = rerank(session, env, start, learnt, original)  # type: ignore[arg-type]
    assert torch.equal(got.mask, right)
    assert got.chosen == ("joint" if learnt_is_right else "prior")
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    env.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("start_uniform", [False, True])
def test_joint_allocation_with_rerank_runs_and_hits_the_target(  # type: ignore[no-untyped-def]
    tmp_path, start_uniform: bool
) -> None:
    from rlprune.search import prune
    from tests.test_search_pin import TwoUnitToy

    cfg = _joint_cfg(lr=0.05, steps=6)
    joint = dataclasses.replace(
        cfg.joint, init="global-magnitude", action="allocation", rerank_steps=2,
        train_weights=True, train_mask="sample", start_uniform=start_uniform,
    )  # fmt: skip
    reward = dataclasses.replace(cfg.reward, target_macs=0.6)
    cfg = dataclasses.replace(cfg, joint=joint, reward=reward, finetune_steps=4, batch_size=32)
    res = prune(
        TwoUnitToy(), toy_split(256, 0), toy_split(300, 1), cfg, test=toy_split(200, 2),
        out_dir=tmp_path / "alloc",
    )  # fmt: skip
    assert res.pruned.macs / res.baseline.macs <= cfg.reward.target_macs * 1.02
    assert {u.chosen for u in res.units} <= {"joint", "prior"}


def test_joint_allocation_keeps_multiples_of_round_to_within_the_target(tmp_path: Path) -> None:
    from rlprune.search import prune
    from tests.test_search_pin import TwoUnitToy

    cfg = _joint_cfg(lr=0.05, steps=4)
    joint = dataclasses.replace(
        cfg.joint, init="global-magnitude", action="allocation", rerank_steps=2
    )
    reward = dataclasses.replace(cfg.reward, target_macs=0.6)
    cfg = dataclasses.replace(
        cfg, joint=joint, reward=reward, finetune_steps=4, batch_size=32, round_to=4,
        strategy="auto",
    )  # fmt: skip
    assert cfg.search_strategy() == "joint"
    res = prune(
        TwoUnitToy(), toy_split(256, 0), toy_split(300, 1), cfg, test=toy_split(200, 2),
        out_dir=tmp_path / "round",
    )  # fmt: skip
    assert res.strategy == "joint"
    assert all(u.channels_after % 4 == 0 for u in res.units)  # 4 or 8 of each unit's 8
    assert res.pruned.macs <= cfg.reward.target_macs * res.baseline.macs


def test_auto_walks_where_round_to_keeps_the_joint_start_above_the_target(
    tmp_path: Path,
) -> None:
    from rlprune.search import prune
    from rlprune.search.joint import JointStartError
    from tests.test_search_pin import TwoUnitToy

    cfg = _joint_cfg(lr=0.05, steps=2)
    joint = dataclasses.replace(cfg.joint, init="global-magnitude", action="allocation")
    reward = dataclasses.replace(cfg.reward, target_macs=0.6)
    # 8-filter units on multiples of 8: no cut is possible, global magnitude keeps 100%
    cfg = dataclasses.replace(
        cfg, joint=joint, reward=reward, finetune_steps=2, batch_size=32, round_to=8,
        strategy="joint",
    )  # fmt: skip
    data = (TwoUnitToy(), toy_split(128, 0), toy_split(100, 1))
    with pytest.raises(JointStartError, match="stays above 0.6x MACs with round_to=8"):
        prune(*data, cfg, out_dir=tmp_path / "joint")
    auto = dataclasses.replace(cfg, strategy="auto")
    assert prune(*data, auto, out_dir=tmp_path / "auto").strategy == "layerwise"


def test_mcnemar_z_by_hand() -> None:
    from rlprune.search.choice import mcnemar_z

    a = torch.tensor([True] * 10 + [False] * 2 + [True] * 5)
    b = torch.tensor([False] * 10 + [True] * 2 + [True] * 5)
    assert mcnemar_z(a, b) == pytest.approx((10 - 2) / 12**0.5)
    assert mcnemar_z(b, a) == pytest.approx(-(10 - 2) / 12**0.5)
    assert mcnemar_z(a, a) == 0.0


def test_cut_copy_computes_what_the_masked_network_computes_and_leaves_it_masked() -> None:
    from rlprune.env import JointEnv

    model = _RandomTwoConv()
    x = torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    env = JointEnv(model, (x, torch.zeros(8, dtype=torch.long)), (x, x[:, 0, 0, 0].long()),
                   x[:1], _joint_cfg(lr=0.05), 1)  # fmt: skip
    mask = (torch.arange(32) % 3 != 0).float()  # every third filter of the 16 + 16: 6 and 5
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    cut = env.cut_copy(mask, weights)
    assert [m.out_channels for m in cut.modules() if isinstance(m, torch.nn.Conv2d)] == [10, 11]
    with torch.no_grad():
        env.set_masks(mask)  # the live model keeps its hooks: masked, the same function
        assert torch.allclose(cut(x), model(x), atol=1e-5)
        env.set_masks(None)
        assert torch.equal(model.state_dict()["0.weight"], weights["0.weight"])
        assert model[0].out_channels == 16
    env.close()


def test_auto_strategy_is_joint_for_mac_and_latency_budgets_in_one_process_only() -> None:
    from rlprune.config import PruneConfig, RewardConfig

    macs = RewardConfig(mode="budget", target_macs=0.5)
    assert PruneConfig().search_strategy() == "layerwise"  # accuracy-bounded by default
    assert PruneConfig(reward=macs).search_strategy() == "joint"
    assert PruneConfig(reward=macs).search_strategy(distributed=True) == "layerwise"
    amc = RewardConfig(mode="amc", target_macs=0.5)
    assert PruneConfig(reward=amc).search_strategy() == "layerwise"
    lat = RewardConfig(mode="budget", efficiency="latency", target_latency=0.5)
    assert PruneConfig(reward=lat).search_strategy() == "joint"
    assert PruneConfig(strategy="layerwise", reward=lat).search_strategy() == "layerwise"
    assert PruneConfig(strategy="layerwise", reward=macs).search_strategy() == "layerwise"
    for walk_only in (
        PruneConfig(reward=RewardConfig(mode="budget", target_macs=0.5, project=True)),
        PruneConfig(reward=RewardConfig(mode="budget", target_macs=0.5, efficiency="filters")),
    ):
        assert walk_only.search_strategy() == "layerwise"
    assert PruneConfig(reward=macs, round_to=8).search_strategy() == "joint"


def test_auto_walks_layer_by_layer_where_the_joint_start_misses_the_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rlprune.config import AgentConfig, PruneConfig, RewardConfig, RolloutConfig
    from rlprune.search import prune
    from rlprune.search.joint import JointStartError
    from tests.test_search_pin import TwoUnitToy

    # 4 + 4 filters, min_keep 1: global magnitude cannot land within 2% of 0.4x MACs
    cfg = PruneConfig(
        seed=3, finetune_steps=2, final_finetune_epochs=0, min_keep=1, latency_runs=3,
        batch_size=32, agent=AgentConfig(samples=4, updates=2, patience=3),
        reward=RewardConfig(mode="budget", target_macs=0.4),
        rollout=RolloutConfig(reward_set=100, calib_set=32),
    )  # fmt: skip
    data = (toy_split(128, 0), toy_split(100, 1))
    res = prune(TwoUnitToy(), *data, cfg, test=toy_split(100, 2), out_dir=tmp_path / "auto")
    assert {u.chosen for u in res.units}.isdisjoint({"joint", "prior"})  # the walk's records
    assert res.pruned.macs < res.baseline.macs
    joint = dataclasses.replace(cfg, strategy="joint")
    with pytest.raises(JointStartError, match="cannot start"):
        prune(TwoUnitToy(), *data, joint, test=toy_split(100, 2), out_dir=tmp_path / "joint")


@pytest.mark.parametrize(("extra_right", "replaced"), [(20, True), (2, False)])
def test_a_later_start_replaces_the_first_only_when_significantly_better(
    monkeypatch: pytest.MonkeyPatch, extra_right: int, replaced: bool
) -> None:
    import rlprune.search.choice as choice

    first, second = torch.zeros(4), torch.ones(4)
    base = torch.tensor([True] * 60 + [False] * 40)
    better = base.clone()
    better[60 : 60 + extra_right] = True  # right on extra_right images the first gets wrong
    got = {0: base, 1: better}
    monkeypatch.setattr(choice, "held_out", lambda s, env: (torch.zeros(100), torch.zeros(100)))
    recovered: list[int] = []

    def fake(
        s: object, env: object, mask: torch.Tensor, original: object, images: object
    ) -> torch.Tensor:
        recovered.append(int(mask[0]))
        return got[int(mask[0])]

    monkeypatch.setattr(choice, "recovered_hits", fake)
    session = SimpleNamespace(cfg=SimpleNamespace(joint=JointConfig()))  # rerank_z = 2
    mask, hits = choice.fair_pick(session, None, [("a", first), ("b", second)], {})  # type: ignore[arg-type]
    assert torch.equal(mask, second if replaced else first)  # z = 4.47 or 1.41 against 2
    assert torch.equal(hits, better if replaced else base)
    assert recovered == [0, 1]
    again, _ = choice.fair_pick(session, None, [("a", first), ("b", second)], {}, known=base)  # type: ignore[arg-type]
    assert torch.equal(again, mask) and recovered == [0, 1, 1]  # the incumbent's reused


def test_a_challenger_equal_to_the_incumbent_is_not_recovered_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rlprune.search.choice as choice

    mask = torch.tensor([1.0, 0.0, 1.0])
    base = torch.tensor([True, False, True])
    monkeypatch.setattr(choice, "held_out", lambda s, env: (torch.zeros(3), torch.zeros(3)))
    recovered: list[torch.Tensor] = []

    def fake(
        s: object, env: object, m: torch.Tensor, original: object, images: object
    ) -> torch.Tensor:
        recovered.append(m)
        return base

    monkeypatch.setattr(choice, "recovered_hits", fake)
    session = SimpleNamespace(cfg=SimpleNamespace(joint=JointConfig()))
    pairs = [("global-magnitude", mask), ("uniform", mask.clone())]
    got, hits = choice.fair_pick(session, None, pairs, {})  # type: ignore[arg-type]
    assert got is mask and torch.equal(hits, base)
    assert len(recovered) == 1  # the incumbent once; the equal challenger never


def test_a_walk_folder_resumed_as_a_joint_search_starts_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rlprune.config import PruneConfig
    from rlprune.search import prune
    from tests.test_search_pin import TwoUnitToy

    cfg = _joint_cfg(lr=0.05, steps=2)
    joint = dataclasses.replace(cfg.joint, init="global-magnitude", action="allocation")
    reward = dataclasses.replace(cfg.reward, target_macs=0.6)
    cfg = dataclasses.replace(
        cfg, joint=joint, reward=reward, finetune_steps=2, batch_size=32, strategy="auto"
    )
    data = (toy_split(128, 0), toy_split(100, 1))
    with monkeypatch.context() as m:  # as an older version resolved auto: the walk
        m.setattr(PruneConfig, "search_strategy", lambda self, distributed=False: "layerwise")
        assert prune(TwoUnitToy(), *data, cfg, out_dir=tmp_path).strategy == "layerwise"
    res = prune(TwoUnitToy(), *data, cfg, out_dir=tmp_path, resume=True)
    assert res.strategy == "joint" and {u.chosen for u in res.units} <= {"joint", "prior"}
    assert "its agent is another search's" in caplog.text


def test_allocation_masks_round_to_multiples_or_the_whole_unit() -> None:
    from rlprune.env.joint import Allocation

    # units of 12 and 8 filters, min_keep 3, round_to 8: 12 can keep 8 or 12, 8 only 8
    env = SimpleNamespace(
        split=lambda p: [p[:12], p[12:]], min_keep=[3, 3], cfg=SimpleNamespace(round_to=8)
    )
    prior = torch.cat([torch.arange(12.0), -torch.arange(8.0)])
    alloc = Allocation(env, prior)  # type: ignore[arg-type]
    logit = torch.logit(torch.tensor([[0.5, 0.5], [0.95, 0.2], [0.01, 0.01]]))
    masks = alloc.masks(logit)
    assert masks[:, :12].sum(1).tolist() == [8.0, 12.0, 8.0]  # 6 -> 8, 11 -> 12 (whole), 3 -> 8
    assert masks[:, 12:].sum(1).tolist() == [8.0, 8.0, 8.0]
    assert masks[0, :12].tolist() == [0.0] * 4 + [1.0] * 8  # the 8 highest prior logits
