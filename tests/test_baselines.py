"""Heuristic pruners of rlprune.baselines: MAC targets, given counts, known-useless filters.

Models are tiny zoo nets with random weights and randomised BN statistics (eval mode); MACs are
always checked on an exact torch-pruning count of the physically pruned model.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from rlprune.baselines import BASELINES, MAC_TARGETED, prune_to_target
from rlprune.errors import ConfigError, PruningError
from rlprune.models import build_model
from rlprune.pruning import UnitMacs, count_macs_params, filter_l1, find_units, remove_channels

X = torch.zeros(1, 1, 16, 16)
CALIB = (
    torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(1)),
    torch.arange(32) % 10,
)


def _model(name: str, width: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, 1, 10, 16, width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _channels(model: nn.Module) -> dict[str, int]:
    return {u.name: u.channels for u in find_units(model, X)}


def _ratio(pruned: nn.Module, base: nn.Module) -> float:
    return count_macs_params(pruned, X)[0] / count_macs_params(base, X)[0]


@pytest.mark.parametrize("name,width", [("vgg-small", 0.25), ("resnet20", 0.25)])
@pytest.mark.parametrize("method", MAC_TARGETED)
def test_mac_targeting_methods_hit_the_target(name: str, width: float, method: str) -> None:
    base = _model(name, width)
    for target in (0.5, 0.3):
        model = copy.deepcopy(base)
        kept = prune_to_target(model, method, target, X, calib=CALIB)
        assert abs(_ratio(model, base) / target - 1) <= 0.02
        assert kept == _channels(model)
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)  # the classifier is intact


@pytest.mark.parametrize("method", ["random", "l1-rl-ratios"])
def test_count_based_methods_reproduce_the_counts(method: str) -> None:
    base = _model("resnet20", 0.5)
    rng = random.Random(0)
    counts = {n: rng.randint(max(1, c // 2), c) for n, c in _channels(base).items()}
    model = copy.deepcopy(base)
    assert prune_to_target(model, method, 0.5, X, counts=counts, seed=3) == counts
    assert _channels(model) == counts


def test_random_is_seeded_and_l1_rl_ratios_keeps_the_largest_filters() -> None:
    base = _model("vgg-small", 0.5)
    units = find_units(base, X)
    counts = {u.name: u.channels // 2 for u in units}
    runs: dict[tuple[str, int], list[dict[str, torch.Tensor]]] = {}
    for method, seed in [("random", 0), ("random", 0), ("random", 1), ("l1-rl-ratios", 0)]:
        model = copy.deepcopy(base)
        prune_to_target(model, method, 0.5, X, counts=counts, seed=seed)
        runs.setdefault((method, seed), []).append(model.state_dict())
    same = runs[("random", 0)]
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    assert any(not torch.equal(same[0][k], runs[("random", 1)][0][k]) for k in same[0])
    # l1-rl-ratios: the first unit keeps exactly its largest-L1 filters
    first = units[0]
    top = torch.topk(filter_l1(base, first), counts[first.name]).indices.sort().values
    kept_w = runs[("l1-rl-ratios", 0)][0][f"{first.name}.weight"]
    assert torch.equal(kept_w, base.state_dict()[f"{first.name}.weight"][top])


@pytest.mark.parametrize("name", ["vgg-small", "resnet20"])
@pytest.mark.parametrize("method", ["l1-uniform", "global-magnitude", "bn-scale"])
def test_known_useless_filters_are_removed_first(name: str, method: str) -> None:
    """A quarter of every unit's filters have zero weights, BN gamma and beta: they go first."""
    model = _model(name, 0.5, seed=1)
    mods = dict(model.named_modules())
    units = find_units(model, X)
    gen = torch.Generator().manual_seed(0)
    useless = {u.name: torch.randperm(u.channels, generator=gen)[: u.channels // 4] for u in units}
    with torch.no_grad():
        for u in units:
            for p in u.producers:  # every conv and BN whose output carries the unit's channels
                mods[p].weight[useless[u.name]] = 0
                if isinstance(mods[p], nn.BatchNorm2d):
                    mods[p].bias[useless[u.name]] = 0
    reference = copy.deepcopy(model)
    for u in units:
        mask = torch.ones(u.channels)
        mask[useless[u.name]] = 0
        remove_channels(reference, u, mask, X)
    target = _ratio(reference, model)  # exactly the useless filters must go

    kept = prune_to_target(model, method, target, X)
    assert kept == {u.name: u.channels - len(useless[u.name]) for u in units}
    after = dict(model.named_modules())
    for u in units:  # and the survivors are exactly the useful ones
        assert bool((after[u.name].weight.flatten(1).abs().sum(1) > 0).all())
    assert _ratio(model, reference) == 1.0


def test_mac_model_is_exact_on_the_zoo() -> None:
    rng = random.Random(0)
    for name in ("resnet20", "mobilenetv2-small"):
        model = _model(name, 0.5)
        units = find_units(model, X)
        mac = UnitMacs(model, units, X)
        for _ in range(2):
            counts = {u.name: rng.randint(1, u.channels) for u in units}
            pruned = copy.deepcopy(model)
            for u in units:
                mask = torch.zeros(u.channels)
                mask[: counts[u.name]] = 1
                remove_channels(pruned, u, mask, X, min_keep=1)
            assert mac(counts) == pytest.approx(count_macs_params(pruned, X)[0], abs=0.5)


def test_bad_requests_raise_config_error() -> None:
    model = _model("vgg-small", 0.25)
    with pytest.raises(ConfigError, match="valid: " + ", ".join(BASELINES)):
        prune_to_target(model, "magic", 0.5, X)
    for method in ("random", "l1-rl-ratios"):
        with pytest.raises(ConfigError, match="counts"):
            prune_to_target(model, method, 0.5, X)
    with pytest.raises(ConfigError, match="calib"):
        prune_to_target(model, "taylor", 0.5, X)
    with pytest.raises(ConfigError, match="target_macs"):
        prune_to_target(model, "l1-uniform", 1.5, X)
    with pytest.raises(ConfigError, match="unknown unit"):
        prune_to_target(model, "random", 0.5, X, counts={"nope": 1})


def test_min_keep_floor_above_the_target_is_reported() -> None:
    model = _model("vgg-small", 0.25)
    with pytest.raises(PruningError, match="min_keep"):
        prune_to_target(model, "global-magnitude", 0.2, X, min_keep=0.9)
