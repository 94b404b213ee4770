"""The joint search under a latency budget (known answers on a hand-made latency table).

``TwoUnitToy`` has 8 filters in each of its two units, 4 of them useless in each. The table
prices ``1 + k1 + 10 * k2`` ms with ``k1``/``k2`` kept in conv1/conv2: a conv2 filter costs 10
times a conv1 filter, while in MACs a conv1 filter costs more (224 vs 180). At 0.508x the
predicted latency (45.2 ms of 89) the only masks that keep every useful filter are 4 + 4 (45 ms);
a MAC budget of 0.49x is met by cutting conv1 to 4 and conv2 only to 6.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlprune.config import PruneConfig, RewardConfig
from rlprune.errors import ConfigError, PruningError
from rlprune.pruning import UnitMacs, count_macs_params, find_units, group_magnitude
from rlprune.pruning.latency import LatencyLUT, LatencyTable, LayerTerm
from tests.test_joint import _joint_cfg, _RandomTwoConv
from tests.test_search_pin import TwoUnitToy
from tests.toy import toy_split

torch.set_num_threads(1)

TARGET = 0.508  # of 89 ms: 45.2 ms, met by keeping 4 + 4 filters (45 ms)


def _lut() -> LatencyLUT:
    """``1 + k1 + 10 * k2`` ms at batch 64 (linear in each unit's kept filters)."""

    def term(unit: str, ms_full: float) -> LayerTerm:
        return LayerTerm(unit, 8, 8, {}, {unit: 1.0}, (8,), (1, 8), ((ms_full / 8, ms_full),))

    table = LatencyTable(64, (term("conv1", 8.0), term("conv2", 80.0)), scale=1.0, offset=1.0)
    units = {"conv1": 8, "conv2": 8}
    return LatencyLUT(units, (4, 4, 4), {"cpu": "Hand Made 1"}, "torch", 1, (0.5, 1.0), {64: table})


def _cfg(target: float, **joint: object) -> PruneConfig:
    cfg = _joint_cfg(lr=0.05, steps=6)
    return dataclasses.replace(
        cfg,
        strategy="auto",
        finetune_steps=2,
        batch_size=32,
        reward=RewardConfig(mode="budget", efficiency="latency", target_latency=target),
        joint=dataclasses.replace(
            cfg.joint, init="global-magnitude", action="allocation", rerank_steps=2, **joint
        ),
    )


def _env(cfg: PruneConfig, lut: LatencyLUT | None):  # type: ignore[no-untyped-def]
    from rlprune.env import JointEnv

    model, data = TwoUnitToy(), toy_split(64, 0)
    x = data.images[:1]
    base = count_macs_params(model, x)[0]
    env = JointEnv(model, (data.images, data.labels), (data.images, data.labels), x, cfg, base, lut)
    return env, SimpleNamespace(model=model, example=x, cfg=cfg)


def test_masks_are_priced_by_the_table_and_the_target_is_its_fraction() -> None:
    env, _ = _env(_cfg(TARGET), _lut())
    assert env.base_cost == pytest.approx(89.0) and env.target == pytest.approx(TARGET * 89.0)
    masks = torch.zeros(3, 16)
    masks[0] = 1.0
    masks[1, [0, 1, 2, 3, 8, 9, 10, 11]] = 1.0
    # an empty unit is priced at min_keep (1): the cut keeps that many
    assert env.cost(masks).tolist() == pytest.approx([89.0, 45.0, 12.0])
    assert torch.equal(env.macs(masks[:1]), torch.tensor([2208.0], dtype=torch.float64))
    batch = env.score(masks)
    assert torch.equal(batch.cost, env.cost(masks)) and torch.equal(batch.macs, env.macs(masks))
    env.close()
    macs = RewardConfig(mode="budget", target_macs=0.5)
    mac_env, _ = _env(dataclasses.replace(_cfg(TARGET), reward=macs), None)  # MACs, as before
    assert torch.equal(mac_env.cost(masks), mac_env.macs(masks))
    mac_env.close()
    with pytest.raises(ConfigError, match="both or neither"):  # a latency budget needs a table
        _env(_cfg(TARGET), None)


def test_global_counts_ranks_globally_under_any_cost() -> None:
    from rlprune.baselines import global_counts, prune_to_target

    # under MACs: exactly global magnitude's counts (one ranking loop for both)
    model, x = _RandomTwoConv(), toy_split(2, 0).images[:1]
    units = find_units(model, x)
    mac, scores = UnitMacs(model, units, x), group_magnitude(model, units, x)
    got = global_counts(mac, units, scores, 0.55 * mac.total, min_keep=1)
    assert got == prune_to_target(_RandomTwoConv(), "global-magnitude", 0.55, x, min_keep=1)
    # under the table: conv2's useless filters go (4 + 4, 45 ms); a MAC budget keeps 6 of them
    toy, x = TwoUnitToy(), toy_split(2, 0).images[:1]
    units = find_units(toy, x)
    scores = group_magnitude(toy, units, x)
    lm = _lut().model(64)
    assert global_counts(lm, units, scores, TARGET * lm.total, min_keep=1) == {
        "conv1": 4, "conv2": 4,
    }  # fmt: skip
    assert prune_to_target(TwoUnitToy(), "global-magnitude", 0.49, x, min_keep=1) == {
        "conv1": 4, "conv2": 6,
    }  # fmt: skip


def test_a_latency_target_global_magnitude_cannot_reach_is_a_start_error() -> None:
    from rlprune.search.joint import start_point

    env, session = _env(_cfg(0.1), _lut())  # one filter per unit costs 12 ms of 89: 0.135x
    with pytest.raises(PruningError, match="0.1x latency"):
        start_point(session, env)  # type: ignore[arg-type]
    env.close()


def test_the_joint_search_lands_on_the_latency_target(tmp_path: Path) -> None:
    from rlprune.search import prune

    path = _lut().save(tmp_path / "lut.json")
    cfg = _cfg(TARGET)
    cfg = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, latency_table=str(path)))
    assert cfg.search_strategy() == "joint"  # what auto runs for a latency budget
    run = tmp_path / "run"
    res = prune(
        TwoUnitToy(), toy_split(256, 0), toy_split(300, 1), cfg, test=toy_split(200, 2),
        out_dir=run,
    )  # fmt: skip
    assert res.strategy == "joint"
    # the known answer: within 45.2 ms, only 4 + 4 keeps every useful filter
    assert [u.kept for u in res.units] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert res.pruned.test_acc == 100.0
    lm = _lut().model(64)
    counts = {u.unit: u.channels_after for u in res.units}
    assert lm(counts) <= TARGET * lm.total
    assert all(u.budget_macs == pytest.approx(TARGET * 89.0) for u in res.units)  # in ms
    # the records: the walk's latency section, the table kept in the run folder, cost ratios
    report = json.loads((run / "report.json").read_text())
    (row,) = report["latency"]["rows"]  # the table has batch 64 only
    assert row["batch"] == 64 and row["pruned"]["predicted_ms"] == pytest.approx(45.0)
    assert row["baseline"]["predicted_ms"] == pytest.approx(89.0)
    assert report["latency"]["cpu"] == "Hand Made 1"
    assert LatencyLUT.load(run / "state" / "latency.json") == _lut()
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    ratios = [r["rollout/latency_ratio"] for r in lines if "rollout/latency_ratio" in r]
    assert len(ratios) == cfg.joint.steps and all(0 < r <= 1 for r in ratios)


def test_a_mac_budget_keeps_more_of_the_expensive_unit(tmp_path: Path) -> None:
    from rlprune.search import prune

    # the contrast to the latency run: the same search under 0.49x MACs keeps more of conv2
    cfg = _cfg(TARGET)
    cfg = dataclasses.replace(cfg, reward=RewardConfig(mode="budget", target_macs=0.49))
    res = prune(
        TwoUnitToy(), toy_split(256, 0), toy_split(300, 1), cfg, test=toy_split(200, 2),
        out_dir=tmp_path / "macs",
    )  # fmt: skip
    assert res.strategy == "joint"
    assert [u.channels_after for u in res.units] == [4, 6]
    assert res.pruned.macs <= 0.49 * res.baseline.macs
    lines = (tmp_path / "macs" / "metrics.jsonl").read_text()
    assert "rollout/macs_ratio" in lines and "rollout/latency_ratio" not in lines


def test_the_allocation_projection_prices_with_the_table() -> None:
    from rlprune.env.allocation import Allocation

    env, _ = _env(_cfg(TARGET), _lut())
    prior = torch.cat([-torch.arange(8.0), -torch.arange(8.0)])  # filters 0-3 rank first
    mask = Allocation(env, prior).project(torch.zeros(2, dtype=torch.float64))
    cost = float(env.cost(mask[None])[0])
    assert cost <= env.target  # within 45.2 ms ...
    counts = env.counts(mask[None])[0].tolist()
    # ... and the largest common shift of equal ratios: 5 + 5 would cost 56 ms
    assert counts == [4.0, 4.0] and cost == pytest.approx(45.0)
    env.close()
