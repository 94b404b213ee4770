"""End-to-end: the agent learns to prune exactly the provably useless filters."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rlprune.cli import main
from rlprune.config import AgentConfig, PruneConfig, RewardConfig, RolloutConfig
from rlprune.pruning import count_macs_params, find_units, remove_channels
from rlprune.search import PruneResult, prune
from tests.toy import ToyNet, toy_split


def _toy_cfg(updates: int = 30, **reward: object) -> PruneConfig:
    return PruneConfig(
        strategy="layerwise",  # these tests pin the layer-wise walk (budget mode: auto is joint)
        finetune_steps=0,
        final_finetune_epochs=0,
        min_keep=1,
        latency_runs=3,
        agent=AgentConfig(samples=12, updates=updates, lr=0.05, patience=updates, min_entropy=0.0),
        reward=RewardConfig(**reward),  # type: ignore[arg-type]
        rollout=RolloutConfig(reward_set=200, calib_set=64),
    )


def _toy_prune(model: torch.nn.Module, cfg: PruneConfig, out: Path) -> PruneResult:
    """The search on the toy splits every test here uses (256 train, 200 val, 200 test)."""
    return prune(
        model, toy_split(256, 0), toy_split(200, 1), cfg, test=toy_split(200, 2), out_dir=out
    )


def test_policy_prunes_exactly_the_zero_filters(tmp_path) -> None:
    torch.manual_seed(0)
    model = ToyNet()
    cfg = _toy_cfg(updates=40, mode="accuracy", max_acc_drop=1.0)
    res = _toy_prune(model, cfg, tmp_path / "run")
    (unit,) = res.units
    assert unit.kept == [0, 1, 2, 3]
    assert res.pruned.test_acc == 100.0
    assert res.pruned.macs < res.baseline.macs
    # the learned policy itself (not only the best sample) separates the two groups
    assert unit.det_kept == [0, 1, 2, 3]
    assert unit.det_acc == 100.0


@pytest.mark.parametrize("mode", ["budget", "amc"])
def test_budget_modes_land_on_the_target_without_losing_accuracy(tmp_path, mode: str) -> None:
    # Removing the 4 zero filters of 8 is worth exactly this fraction of the MACs: the budget
    # can be met by pruning only useless filters, so accuracy must stay at 100%.
    model = ToyNet()
    x = toy_split(4, 0).images[:1]
    full = count_macs_params(model, x)[0]
    probe = copy.deepcopy(model)
    unit = find_units(probe, x)[0]
    remove_channels(probe, unit, torch.tensor([1.0] * 4 + [0.0] * 4), x)
    target = count_macs_params(probe, x)[0] / full
    res = _toy_prune(model, _toy_cfg(mode=mode, target_macs=target), tmp_path / mode)
    assert res.units[0].kept == [0, 1, 2, 3]
    assert res.pruned.macs / full == pytest.approx(target, rel=0.02)
    assert res.pruned.test_acc == 100.0


def test_huang_weight_state_finds_the_zero_filters(tmp_path) -> None:
    """Huang et al.'s state (the raw filter weights) with a per-unit policy: zero filters have
    zero state, so the policy can tell them apart without any hand-made feature."""
    cfg = dataclasses.replace(
        _toy_cfg(mode="accuracy", max_acc_drop=1.0),
        agent=AgentConfig(
            state="weights",
            samples=12,
            updates=40,
            lr=0.05,
            patience=40,
            min_entropy=0.0,
            init_keep=0.5,
        ),
    )
    res = _toy_prune(ToyNet(), cfg, tmp_path / "w")
    assert res.units[0].kept == [0, 1, 2, 3]
    assert res.pruned.test_acc == 100.0


def test_report_command_regenerates_markdown_and_plots(tmp_path) -> None:
    out = tmp_path / "r"
    prune(
        ToyNet(),
        toy_split(64, 0),
        toy_split(64, 1),
        _toy_cfg(mode="accuracy"),
        test=toy_split(64, 2),
        out_dir=out,
    )
    for f in ("report.md", "reward_curves.png", "walk.png"):
        (out / f).unlink()
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| test accuracy |" in text and "`conv`" in text
    assert "timed side by side after the search" in text
    rep = json.loads((out / "report.json").read_text())
    for side in ("baseline", "pruned"):  # both re-timed at the end: 3 rounds of the runs
        assert rep[side]["latency_b1_ms"] > 0 and rep[side]["latency_b64_iqr_ms"] >= 0
    assert (out / "reward_curves.png").stat().st_size > 1000 and (out / "walk.png").exists()


def test_budget_projection_lands_on_the_unit_budget(tmp_path) -> None:
    """With reward.project, a mask that misses its budget is completed in policy order."""
    model = ToyNet()
    x = toy_split(4, 0).images[:1]
    full = count_macs_params(model, x)[0]
    cfg = _toy_cfg(mode="budget", target_macs=0.75, project=True)
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, updates=2, patience=2))
    res = _toy_prune(model, cfg, tmp_path / "p")
    unit = res.units[0]
    # 6 of 8 filters is the count whose MACs are closest to 75% of the toy's MACs
    assert unit.channels_after == 6, unit.chosen
    assert res.pruned.macs / full == pytest.approx(0.75, abs=0.05)


def test_bf16_search_reports_the_chosen_mask_rescored_in_fp32(tmp_path, monkeypatch) -> None:
    """With ``rollout.precision=bf16`` the agent learns the same answer on the toy, and the
    decision's accuracy comes from one fp32 re-scoring of the chosen mask (the spy marks fp32
    results, so a re-score whose result is dropped fails)."""
    from rlprune.env import PruningEnv

    calls: list[list[float]] = []
    real = PruningEnv.accuracy

    def spy(self: PruningEnv, mask: torch.Tensor, exact: bool = False) -> float:
        if exact:
            calls.append(mask.tolist())
            return real(self, mask, exact) - 0.125
        return real(self, mask, exact)

    monkeypatch.setattr(PruningEnv, "accuracy", spy)
    base = _toy_cfg(updates=40, mode="accuracy", max_acc_drop=1.0)
    cfg = dataclasses.replace(base, rollout=dataclasses.replace(base.rollout, precision="bf16"))
    (unit,) = _toy_prune(ToyNet(), cfg, tmp_path / "run").units
    assert unit.kept == [0, 1, 2, 3]
    assert calls == [[1.0] * 4 + [0.0] * 4]
    assert unit.rollout_acc == 99.875
