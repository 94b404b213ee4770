"""Tests of rlprune.pruning: units, masking, surgery, MACs.

Known answers for the coupled groups of the zoo models, a hypothesis property test that masked
logits equal physically pruned logits (and that MacModel is exact), the min_keep guard and a
user-defined concat model. Pruned-model files and tools: test_pruned_files.py.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from rlprune.errors import PruningError
from rlprune.models import MODELS, build_model
from rlprune.pruning import (
    MacModel,
    Unit,
    UnitMask,
    classifier_names,
    count_macs_params,
    filter_l1,
    find_units,
    remove_channels,
    resolve_min_keep,
)

SIZE = 16
TRACE = torch.zeros(1, 1, SIZE, SIZE)
# Zoo models of the property test (the big vgg11/16 at full width are left out).
PROPERTY_MODELS = [
    ("vgg-small", 0.5),
    ("resnet20", 0.5),
    ("mobilenetv2-small", 0.5),
    ("vgg11-bn", 0.25),
]
UNIT_COUNTS = {"vgg-small": 6, "resnet20": 12, "mobilenetv2-small": 12, "vgg11-bn": 8}


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running stats and affine parameters, so masks matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def zoo(name: str, width: float = 0.5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_bn(build_model(name, 1, 10, SIZE, width), seed).eval()


def inputs(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@functools.cache
def _zoo_cached(name: str, width: float) -> tuple[nn.Module, tuple[Unit, ...]]:
    """One model + units per zoo entry for the whole module (never mutated by the tests)."""
    model = zoo(name, width)
    return model, tuple(find_units(model, TRACE))


@functools.cache
def _mac_model(name: str, width: float, unit_index: int) -> MacModel:
    model, units = _zoo_cached(name, width)
    return MacModel.measure(model, units[unit_index], TRACE)


def by_name(units: list[Unit] | tuple[Unit, ...], name: str) -> Unit:
    return next(u for u in units if u.name == name)


def mask_from(keep: list[int], channels: int) -> torch.Tensor:
    mask = torch.zeros(channels)
    mask[keep] = 1
    return mask


# ----------------------------------------------------------------------------- units
def test_resnet20_units_known_answer() -> None:
    _, units = _zoo_cached("resnet20", 0.5)
    assert len(units) == 12  # 3 residual stream groups + 9 conv1 units
    assert [u.depth for u in units] == list(range(12))
    stream = by_name(units, "stem.0")
    expected_producers = {"stem.0", "stem.1"}
    for b in range(3):
        expected_producers |= {f"layers.{b}.conv2", f"layers.{b}.bn2"}
    assert set(stream.producers) == expected_producers
    assert {"layers.3.conv1", "layers.3.shortcut.0"} <= set(stream.consumers)
    assert {f"layers.{b}.conv1" for b in range(3)} <= set(stream.consumers)
    assert stream.channels == 8
    # The other two stream groups are rooted at the first block of stages 2 and 3.
    for root, first, last in (("layers.3.conv2", 3, 5), ("layers.6.conv2", 6, 8)):
        group = by_name(units, root)
        assert {f"layers.{first}.shortcut.0", f"layers.{first}.shortcut.1"} <= set(group.producers)
        for b in range(first, last + 1):
            assert {f"layers.{b}.conv2", f"layers.{b}.bn2"} <= set(group.producers)
    # Every block's conv1 is its own unit, consumed by the block's conv2.
    conv1_units = [u for u in units if u.name.endswith(".conv1")]
    assert [u.name for u in conv1_units] == [f"layers.{b}.conv1" for b in range(9)]
    for u in conv1_units:
        block = u.name.rsplit(".", 1)[0]
        assert u.producers == (f"{block}.conv1", f"{block}.bn1")
        assert u.consumers == (f"{block}.conv2",)
    assert all(0 < u.mac_share <= 1 for u in units)


def test_mobilenet_depthwise_coupled_to_expansion() -> None:
    _, units = _zoo_cached("mobilenetv2-small", 0.5)
    unit = next(u for u in units if "blocks.1.block.0" in u.producers)
    assert unit.name == "blocks.1.block.0"
    assert {"blocks.1.block.1", "blocks.1.block.3", "blocks.1.block.4"} <= set(unit.producers)
    assert unit.consumers == ("blocks.1.block.6",)
    # The depthwise conv is never a unit of its own.
    assert all(u.name != "blocks.1.block.3" for u in units)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_classifier_never_a_producer(name: str) -> None:
    width = 0.5 if name in {n for n, _ in PROPERTY_MODELS} else 0.125
    model = build_model(name, 1, 10, SIZE, width).eval()
    assert classifier_names(model) == ["classifier"]
    units = find_units(model, TRACE)
    assert units
    assert all("classifier" not in u.producers for u in units)


def test_exclude_drops_unit_and_rejects_unknown_names() -> None:
    model, units = _zoo_cached("resnet20", 0.5)
    names = [u.name for u in units]
    kept = [u.name for u in find_units(model, TRACE, exclude=["layers.0.conv1"])]
    assert kept == [n for n in names if n != "layers.0.conv1"]
    # Excluding any producer of a coupled group drops the whole group.
    kept = [u.name for u in find_units(model, TRACE, exclude=["layers.1.bn2"])]
    assert kept == [n for n in names if n != "stem.0"]
    with pytest.raises(PruningError, match="no.such.layer"):
        find_units(model, TRACE, exclude=["no.such.layer"])


def test_resolve_min_keep_known_answers() -> None:
    assert resolve_min_keep(1, 32) == 1
    assert resolve_min_keep(0.1, 32) == 4
    assert resolve_min_keep(0.5, 7) == 4
    assert resolve_min_keep(5, 3) == 3
    assert resolve_min_keep(0.25, 8) == 2
    assert resolve_min_keep(0.0, 8) == 1
    assert resolve_min_keep(1.0, 1) == 1


# ----------------------------------------------------------------------------- exactness
def check_masked_equals_pruned(name: str, width: float, index: int, mask: torch.Tensor) -> None:
    """Masked logits == logits after physical removal; MacModel == counted MACs, exactly."""
    model, units = _zoo_cached(name, width)
    unit = units[index]
    x = inputs()
    with torch.no_grad(), UnitMask(model, unit) as um:
        um.set(mask)
        masked = model(x)
    pruned_model = copy.deepcopy(model)
    kept = remove_channels(pruned_model, unit, mask, TRACE)
    assert kept == torch.nonzero(mask).flatten().tolist()
    root = dict(pruned_model.named_modules())[unit.name]
    assert root.out_channels == len(kept)
    with torch.no_grad():
        pruned = pruned_model(x)
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=0)

    macs_after, _ = count_macs_params(pruned_model, TRACE)
    predicted = _mac_model(name, width, index).macs(len(kept), unit.channels)
    assert float(predicted) == macs_after


@pytest.mark.parametrize(("name", "width"), PROPERTY_MODELS)
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_masked_equals_pruned_and_macs_exact(name: str, width: float, data: st.DataObject) -> None:
    units = _zoo_cached(name, width)[1]
    index = data.draw(st.integers(0, len(units) - 1), label="unit")
    unit = units[index]
    bits = data.draw(
        st.lists(st.booleans(), min_size=unit.channels, max_size=unit.channels), label="mask"
    )
    bits[data.draw(st.integers(0, unit.channels - 1), label="forced keep")] = True
    check_masked_equals_pruned(name, width, index, torch.tensor(bits, dtype=torch.float32))


@pytest.mark.parametrize(
    ("name", "width", "index"),
    [(n, w, i) for n, w in PROPERTY_MODELS for i in range(UNIT_COUNTS[n])],
)
def test_every_unit_masked_equals_pruned(name: str, width: float, index: int) -> None:
    """Every unit of every model once (residual/shortcut and depthwise groups included)."""
    units = _zoo_cached(name, width)[1]
    assert len(units) == UNIT_COUNTS[name]
    channels = units[index].channels
    g = torch.Generator().manual_seed(index)
    mask = (torch.rand(channels, generator=g) < 0.6).float()
    mask[index % channels] = 1
    check_masked_equals_pruned(name, width, index, mask)


def test_masks_matter_with_randomised_bn() -> None:
    """Sanity check that the property test is not vacuous: masking changes the logits."""
    model, units = _zoo_cached("resnet20", 0.5)
    unit = by_name(units, "stem.0")
    x = inputs()
    with torch.no_grad():
        full = model(x)
        with UnitMask(model, unit) as um:
            um.set(torch.arange(unit.channels) % 2)
            masked = model(x)
    assert (full - masked).abs().max() > 1e-3


def test_unit_mask_remove_restores_output_and_checks_length() -> None:
    model, units = _zoo_cached("mobilenetv2-small", 0.5)
    unit = units[2]
    x = inputs()
    with torch.no_grad():
        before = model(x)
        um = UnitMask(model, unit)
        um.set(torch.zeros(unit.channels))
        assert not torch.equal(model(x), before)
        um.set(None)
        assert torch.equal(model(x), before)
        um.set(torch.zeros(unit.channels))
        um.remove()
        assert torch.equal(model(x), before)
    with pytest.raises(ValueError):
        um.set(torch.ones(unit.channels + 1))
    with pytest.raises(PruningError, match="entries"):
        remove_channels(copy.deepcopy(model), unit, torch.ones(unit.channels - 1), TRACE)


def test_unit_mask_per_sample_rows() -> None:
    """A ``[B, C]`` mask applies row i to sample i, as a ``[C]`` mask would."""
    model, units = _zoo_cached("resnet20", 0.5)
    unit = by_name(units, "layers.3.conv2")  # a residual group with a shortcut conv
    x = inputs()
    g = torch.Generator().manual_seed(3)
    rows = (torch.rand(x.shape[0], unit.channels, generator=g) < 0.5).float()
    with torch.no_grad(), UnitMask(model, unit) as um:
        um.set(rows)
        batched = model(x)
        for i in range(x.shape[0]):
            um.set(rows[i])
            torch.testing.assert_close(batched[i], model(x)[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("model_name", "unit_name"), [("vgg-small", "features.3"), ("resnet20", "stem.0")]
)
@pytest.mark.parametrize("min_keep", [3, 0.25])
def test_min_keep_guard_keeps_largest_l1(model_name: str, unit_name: str, min_keep: float) -> None:
    base, units = _zoo_cached(model_name, 0.5)
    model = copy.deepcopy(base)
    unit = by_name(units, unit_name)
    need = resolve_min_keep(min_keep, unit.channels)
    l1 = filter_l1(model, unit)
    expected = sorted(torch.topk(l1, need).indices.tolist())
    kept = remove_channels(model, unit, torch.zeros(unit.channels), TRACE, min_keep=min_keep)
    assert kept == expected
    assert len(kept) == need
    root = dict(model.named_modules())[unit_name]
    assert root.out_channels == need
    # The guard's survivors are what a mask with exactly those channels would give.
    with torch.no_grad(), UnitMask(base, unit) as um:
        um.set(mask_from(expected, unit.channels))
        masked = base(inputs())
        torch.testing.assert_close(model(inputs()), masked, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- concat model
class ConcatNet(nn.Module):
    """A user model: stem, two conv branches joined by torch.cat, conv, GAP, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 10, 1), nn.BatchNorm2d(10), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = self.mix(torch.cat([self.a(h), self.b(h)], dim=1))
        return self.fc(torch.flatten(self.pool(h), 1))


@pytest.mark.parametrize("unit_name", ["a.0", "b.0", "stem.0"])
def test_concat_model_masked_equals_pruned(unit_name: str) -> None:
    torch.manual_seed(0)
    model = randomise_bn(ConcatNet()).eval()
    units = find_units(model, TRACE)
    assert {u.name for u in units} == {"stem.0", "a.0", "b.0", "mix.0"}
    assert all("fc" not in u.producers for u in units)
    assert by_name(units, "a.0").consumers == ("mix.0",)
    assert by_name(units, "b.0").consumers == ("mix.0",)
    unit = by_name(units, unit_name)
    mask = (torch.arange(unit.channels) % 3 != 1).float()
    x = inputs()
    with torch.no_grad(), UnitMask(model, unit) as um:
        um.set(mask)
        masked = model(x)
    pruned_model = copy.deepcopy(model)
    remove_channels(pruned_model, unit, mask, TRACE)
    assert dict(pruned_model.named_modules())[unit_name].out_channels == int(mask.sum())
    with torch.no_grad():
        torch.testing.assert_close(pruned_model(x), masked, atol=1e-5, rtol=0)
