"""Known answers for rlprune.pruning.importance, and agreement of its two callers.

Hand-built weights make every score computable by hand: constant filters for L1/L2, chosen BN
scales for |gamma|, a +-2 input for mean activation and APoZ, a one-unit linear net for Taylor.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rlprune.agent import unit_statistics
from rlprune.baselines import _unit_scores
from rlprune.pruning import (
    Unit,
    activation_statistics,
    bn_gamma,
    bn_scale,
    filter_l1,
    filter_l2,
    find_units,
    group_magnitude,
    group_taylor,
)

VALUES = (0.5, -2.0, 1.0, -0.25)  # one constant per filter


def _unit(name: str, channels: int, producers: tuple[str, ...]) -> Unit:
    return Unit(name, channels, producers, (), depth=0, mac_share=0.0)


def _constant_conv(c_in: int, values: tuple[float, ...], k: int = 3) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, len(values), k, bias=False)
    with torch.no_grad():
        for j, v in enumerate(values):
            conv.weight[j].fill_(v)
    return conv


def test_l1_l2_of_constant_filters() -> None:
    """Filter j of value v: L1 = k*k*c_in*|v|, L2 = sqrt(k*k*c_in)*|v|."""
    model = nn.Sequential(_constant_conv(3, VALUES), nn.BatchNorm2d(4))
    unit = _unit("0", 4, ("0", "1"))
    v = torch.tensor(VALUES).abs()
    assert torch.allclose(filter_l1(model, unit), 27 * v)
    assert torch.allclose(filter_l2(model, unit), math.sqrt(27) * v)
    assert torch.equal(filter_l1(model, unit), filter_l1(model, unit, reduce_on_cpu=True))


def test_l1_sums_and_l2_joins_over_producer_convs() -> None:
    """Two convs of a residual unit: L1 adds, L2 is the norm of the concatenated filters."""
    model = nn.Sequential(_constant_conv(3, (1.0,) * 4), _constant_conv(2, (2.0,) * 4))
    unit = _unit("0", 4, ("0", "1"))
    assert torch.allclose(filter_l1(model, unit), torch.full((4,), 27 * 1.0 + 18 * 2.0))
    assert torch.allclose(filter_l2(model, unit), torch.full((4,), math.sqrt(27 + 18 * 4.0)))


def test_bn_gamma_and_bn_scale() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, -2.0, 3.0, 0.0]))
        model[2].weight.copy_(torch.tensor([3.0, 2.0, -1.0, 0.0]))
    unit = _unit("0", 4, ("0", "1", "2"))
    want = torch.tensor([2.0, 2.0, 2.0, 0.0])
    assert torch.equal(bn_gamma(model, unit), want)
    scale = bn_scale(model, unit)
    assert scale is not None and torch.equal(scale, want)
    bare = _unit("0", 4, ("0",))
    assert torch.equal(bn_gamma(model, bare), torch.zeros(4))  # features: 0 without a BN
    assert bn_scale(model, bare) is None  # baseline: unscored, the caller leaves it whole
    plain = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4, affine=False))
    assert bn_scale(plain, unit=_unit("0", 4, ("0", "1"))) is None


def test_mean_activation_and_apoz_are_exact() -> None:
    """Channels x and -x of an input that is +-2 half and half: APoZ 0.5, mean(relu) 1."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    x = torch.full((4, 1, 2, 2), 2.0)
    x[:, :, 0, :] = -2.0  # half of every image non-positive
    model.train()
    stats = activation_statistics(model, _unit("0", 2, ("0",)), x, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(stats.apoz, torch.tensor([0.5, 0.5]))
    assert torch.equal(stats.mean_act, torch.tensor([1.0, 1.0]))
    assert stats.taylor.shape == (2,)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # gradients cleared


def test_taylor_of_a_linear_net() -> None:
    """a = 1, logits (0*a, ln3*a), label 0: p = (1/4, 3/4), dL/da = 3/4 ln3 = |a * dL/da|."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[0.0], [math.log(3.0)]]))
    model = nn.Sequential(conv, nn.Flatten(), head)
    stats = activation_statistics(
        model, _unit("0", 1, ("0",)), torch.ones(1, 1, 1, 1), torch.zeros(1, dtype=torch.long)
    )
    assert stats.taylor.item() == pytest.approx(0.75 * math.log(3.0), rel=1e-6)
    assert stats.mean_act.item() == pytest.approx(1.0) and stats.apoz.item() == 0.0


def _chain() -> nn.Module:
    """conv (constant filters) -> BN -> ReLU -> conv with constant weights -> pool -> linear."""
    model = nn.Sequential(
        _constant_conv(3, VALUES, k=3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        _constant_conv(4, (0.1, 0.1), k=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 3),
    )
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.3, -1.0, 2.0, 0.5]))
    return model.eval()


def test_features_and_baselines_agree() -> None:
    """The feature state's L1, L2 and |gamma| columns are the scores of the baselines' path,
    bit for bit; and torch-pruning's group magnitude ranks like the L1/L2 columns when the rest
    of the group (BN scales, the next conv's input slices) is the same for every filter."""
    model = _chain()
    ex = torch.zeros(1, 3, 8, 8)
    units = find_units(model, ex)
    unit = units[0]
    assert unit.name == "0" and unit.producers == ("0", "1")
    x, y = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 3
    stats = unit_statistics(model, unit, x, y)
    assert torch.equal(stats[:, 0], filter_l1(model, unit))
    assert torch.equal(stats[:, 1], filter_l2(model, unit))
    assert torch.equal(stats[:, 2], torch.tensor([0.3, 1.0, 2.0, 0.5]))
    assert torch.equal(stats[:, 2], _unit_scores(model, units, "bn-scale", ex, None)["0"])
    with torch.no_grad():
        model[1].weight.fill_(1.0)  # equal BN scales: the filters alone rank the group
    mag = _unit_scores(model, units, "global-magnitude", ex, None)["0"]
    assert torch.equal(mag, group_magnitude(model, units, ex)["0"])
    order = torch.argsort(torch.tensor(VALUES).abs())
    for col in (stats[:, 0], stats[:, 1], mag):
        assert torch.equal(torch.argsort(col), order)


def test_group_taylor_scores_and_clears_gradients() -> None:
    model = _chain()
    ex = torch.zeros(1, 3, 8, 8)
    units = find_units(model, ex)
    calib = (
        torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.arange(8) % 3,
    )
    score = group_taylor(model, units, ex, calib)["0"]
    assert score.shape == (4,) and score.dtype == torch.float32 and torch.isfinite(score).all()
    assert torch.equal(score, _unit_scores(model, units, "taylor", ex, calib)["0"])
    assert all(p.grad is None for p in model.parameters())
