"""Conformance zoo: every topology of tests/zoo.py has the right units, masks exactly like the
cut model (fast and fallback scorers alike), prunes end to end, reloads and exports."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import rlprune
from rlprune.data import Split
from rlprune.pruning import (
    UnitMask,
    count_macs_params,
    find_units,
    remove_channels,
    skipped_units,
    trace_units,
)
from rlprune.pruning.export import load_pt2
from rlprune.rollouts import MaskedScorer, NaiveScorer, PrefixScorer, make_scorer
from tests.zoo import CLASSES, IN, SIZE, ZOO, build, cbr, example

# Units the masked-vs-cut check must skip (the forward hard-codes the split sizes / halves).
SKIPPED = {"split-chunk": {"stem.0", "mix"}}
# Units that must exist (and be pruned): the point of each topology.
EXPECTED = {
    "concat-depthwise": {"dw", "pw"},
    "dense": {"stem", "layers.0.2", "layers.1.2", "layers.2.2"},
    "split-chunk": {"left.0", "right.0"},
    "grouped": {"stem.0", "reduce.0", "grouped.0", "expand.0"},
    "depthwise-separable": {"stem.0", "pw1.0", "pw2.0"},
    "residual": {"stem.0", "c3"},
    "gate": {"stem.0", "fc1", "out.0"},
    "flatten-linear": {"c1", "c2"},
    "adaptive-pool": {"c1.0", "c2.0"},
    "two-heads": {"c1.0", "c2.0"},
    "control-flow": {"c1.0", "c2.0"},
}


def _batch(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, IN, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _size(mod: nn.Module, is_input: bool) -> int:
    if isinstance(mod, nn.Linear):
        return mod.in_features if is_input else mod.out_features
    if isinstance(mod, nn.Conv2d):
        return mod.in_channels if is_input else mod.out_channels
    assert isinstance(mod, nn.BatchNorm2d)
    return mod.num_features


@pytest.mark.parametrize("name", list(ZOO))
def test_units_are_right(name: str) -> None:
    model = build(name)
    units = find_units(model, example())
    assert {u.name for u in units} == EXPECTED[name]
    assert set(skipped_units(model)) == SKIPPED.get(name, set())
    mods = dict(model.named_modules())
    for u in units:
        root = mods[u.name]
        assert isinstance(root, nn.Conv2d) and root.out_channels % u.channels == 0
        for member, is_input in [(p, False) for p in u.producers] + [
            (c, True) for c in u.consumers
        ]:
            local, unit = u.index(member, is_input)
            size = _size(mods[member], is_input)
            assert len(set(local)) == len(local) and all(0 <= i < size for i in local), member
            assert set(unit) <= set(range(u.channels)), member
            # every unit channel owns the same number of this member's channels
            counts = [unit.count(c) for c in set(unit)]
            assert len(set(counts)) == 1, member
        assert set(u.index(u.name)[1]) == set(range(u.channels))  # the root spans the unit


def test_grouped_conv_is_pruned_per_group() -> None:
    model = build("grouped")
    unit = next(u for u in find_units(model, example()) if u.name == "grouped.0")
    assert unit.channels == 2  # 8 channels in 4 groups: 2 in-group positions
    remove_channels(model, unit, torch.tensor([1.0, 0.0]), example())
    conv = model.grouped[0]
    assert (conv.out_channels, conv.groups) == (4, 4)
    assert model.expand[0].in_channels == 4
    assert model(_batch(2, 0)).shape == (2, CLASSES)


@pytest.mark.parametrize("name", list(ZOO))
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_masked_logits_equal_the_pruned_model(name: str, data: st.DataObject) -> None:
    model = build(name)
    x = _batch(4, 2)
    for u in find_units(model, example()):
        bits = data.draw(st.lists(st.booleans(), min_size=u.channels, max_size=u.channels))
        mask = torch.tensor(bits, dtype=torch.float32)
        for member in u.producers:  # no conv emptied (a concat input keeps one channel)
            owned = u.index(member)[1]
            mask[owned[data.draw(st.integers(0, len(owned) - 1))]] = 1.0
        with UnitMask(model, u) as hooks, torch.no_grad():
            hooks.set(mask)
            masked = model(x)
        cut = copy.deepcopy(model)
        remove_channels(cut, u, mask, example(), min_keep=1)
        with torch.no_grad():
            assert torch.allclose(masked, cut(x), atol=1e-5), (name, u.name)


@pytest.mark.parametrize("name", list(ZOO))
def test_fast_and_fallback_scorers_equal_the_cut(name: str) -> None:
    model = build(name)
    x, y = _batch(6, 3), torch.arange(6) % CLASSES
    for u in find_units(model, example()):
        mask = (torch.arange(u.channels) % 2 == 0).float()
        want = NaiveScorer(model, u, x, y, 4).logits(mask)
        fast = make_scorer(model, u, x, y, 4)
        assert isinstance(fast, PrefixScorer) == (name != "control-flow")
        for scorer in (fast, MaskedScorer(model, u, x, y, 4)):
            got = scorer.logits(mask)  # type: ignore[attr-defined]
            scorer.close()
            assert torch.allclose(got, want, atol=1e-5), (name, u.name, type(scorer).__name__)


def test_untraceable_model_says_why_once(caplog: pytest.LogCaptureFixture) -> None:
    model = build("control-flow")
    x, y = _batch(4, 0), torch.zeros(4, dtype=torch.long)
    with caplog.at_level(logging.INFO, logger="rlprune.rollouts"):
        for u in find_units(model, example()):
            make_scorer(model, u, x, y, 4).close()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "torch.fx cannot trace the model (TraceError" in warned[0] or "Proxy" in warned[0]


def test_plain_functional_model_takes_the_fast_path(caplog: pytest.LogCaptureFixture) -> None:
    model = build("concat-depthwise")  # F.relu and torch.relu after each conv
    x, y = _batch(4, 0), torch.zeros(4, dtype=torch.long)
    with caplog.at_level(logging.WARNING):
        scorers = [make_scorer(model, u, x, y, 4) for u in find_units(model, example())]
    assert all(isinstance(s, PrefixScorer) for s in scorers)
    assert not [r for r in caplog.records if "cannot trace" in r.getMessage()]


def test_skipped_unit_is_warned_once_and_kept_out(caplog: pytest.LogCaptureFixture) -> None:
    model = build("split-chunk")
    with caplog.at_level(logging.WARNING, logger="rlprune.pruning.verify"):
        find_units(model, example())
        find_units(copy.deepcopy(model), example())  # copies inherit the verdicts
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("is not pruned" in s for s in lines)
    assert any("mix" in s and "split_with_sizes" in s for s in lines)
    assert {u.name for u, _ in trace_units(model, example())} >= {"stem.0", "mix"}


def test_masking_error_names_the_unit_and_module() -> None:
    model = build("residual")
    unit = find_units(model, example())[0]
    bad = type(unit)(unit.name, unit.channels + 1, unit.producers, unit.consumers, 0, 0.0)
    with UnitMask(model, bad) as hooks:
        hooks.set(torch.ones(bad.channels))
        with pytest.raises(rlprune.RlpruneError, match=r"unit stem\.0: cannot mask .* stem\.0"):
            model(_batch(1, 0))


def _data(n: int, seed: int) -> Split:
    return Split(_batch(n, seed), torch.arange(n) % CLASSES)


@pytest.mark.parametrize("name", list(ZOO))
def test_prune_reload_export(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ONNX has its own round-trip test; its exporter would double this test's time.
    monkeypatch.setattr("rlprune.outputs.export_onnx", lambda *a, **k: None)
    torch.manual_seed(0)
    cfg = rlprune.PruneConfig(
        finetune_steps=1,
        final_finetune_epochs=0,
        min_keep=1,
        latency_runs=3,
        batch_size=16,
        agent=rlprune.AgentConfig(samples=3, updates=1, patience=1),
        strategy="layerwise",
        reward=rlprune.RewardConfig(mode="budget", target_macs=0.6),
        rollout=rlprune.RolloutConfig(reward_set=16, calib_set=8),
    )
    model = build(name)
    res = rlprune.prune(model, _data(32, 0), _data(16, 1), cfg, out_dir=tmp_path / "run")
    assert res.pruned.macs < res.baseline.macs
    assert res.pruned.macs == count_macs_params(res.model, example())[0]
    x = _batch(3, 5)
    pruned = res.model.eval()
    with torch.no_grad():
        want = pruned(x.contiguous(memory_format=torch.channels_last))
    loaded, _, _ = rlprune.load_model(tmp_path / "run" / "model.pt", model=ZOO[name]())
    with torch.no_grad():
        assert torch.allclose(loaded(x), want, atol=1e-5)
    program = load_pt2(tmp_path / "run" / "model.pt2")
    assert torch.allclose(program(x), want, atol=1e-5)
    report = (tmp_path / "run" / "report.md").read_text()
    for skipped in SKIPPED.get(name, ()):
        assert f"`{skipped}`" in report.split("## Not pruned")[1]


class ViewHead(nn.Module):
    """A head that flattens with ``.view``, which fails on channels-last activations."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(IN, 8), cbr(8, 8))
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        return self.fc(y.view(y.shape[0], -1))


def test_a_view_head_falls_back_to_nchw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rlprune.models import is_channels_last, runs_channels_last, set_layout

    monkeypatch.setattr("rlprune.outputs.export_onnx", lambda *a, **k: None)
    torch.manual_seed(0)
    model = ViewHead().eval()
    assert not runs_channels_last(model, example())
    with pytest.raises(RuntimeError):  # what the search would hit in its default layout
        set_layout(ViewHead(), True)(example().contiguous(memory_format=torch.channels_last))
    cfg = rlprune.PruneConfig(
        finetune_steps=1, final_finetune_epochs=0, min_keep=1, latency_runs=3, batch_size=16,
        agent=rlprune.AgentConfig(samples=3, updates=1, patience=1),
        strategy="layerwise",
        reward=rlprune.RewardConfig(mode="budget", target_macs=0.6),
        rollout=rlprune.RolloutConfig(reward_set=16, calib_set=8),
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="rlprune"):
        res = rlprune.prune(model, _data(32, 0), _data(16, 1), cfg, out_dir=tmp_path / "run")
    assert res.pruned.macs < res.baseline.macs
    assert not is_channels_last(res.model)
    assert sum("channels-last" in r.getMessage() for r in caplog.records) == 1
