"""The fast path (prefix cache + suffix) returns exactly the naive path's accuracy."""

import copy
import logging

import pytest
import torch

from rlprune.frontier import split_at_frontier
from rlprune.models import build_model, set_layout
from rlprune.pruning import UnitMask, find_units
from rlprune.rollouts import (
    MaskedScorer,
    NaiveScorer,
    PrefixScorer,
    accuracy_stderr,
    make_scorer,
)


def _randomised(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, 1, 10, 16, width=0.5).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", ["vgg-small", "resnet20", "mobilenetv2-small"])
def test_fast_path_matches_naive_path_on_every_unit(name: str, channels_last: bool) -> None:
    """The reference stays NCHW (the naive path, as users hand models over); fast may be NHWC."""
    model = _randomised(name)
    live = set_layout(copy.deepcopy(model), True) if channels_last else model
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 3, 16, 16, generator=g)[:, :1]  # a non-contiguous slice, on purpose
    # Labels from the unpruned model, so accuracies are far from 0 and masks change them.
    with torch.no_grad():
        y = model(x).argmax(1)
    for unit in find_units(model, x[:1]):
        mask = (torch.rand(unit.channels, generator=g) > 0.4).float()
        mask[0] = 1
        naive = NaiveScorer(model, unit, x, y, 32)
        fast = PrefixScorer(live, unit, x, y, 32)
        try:
            if channels_last and fast.cache[0].dim() == 4 and fast.cache[0].shape[1] > 1:
                assert fast.cache[0].is_contiguous(memory_format=torch.channels_last)
            a, b = naive.logits(mask), fast.logits(mask)
            assert torch.allclose(a, b, atol=1e-5), unit.name
            assert naive.accuracy(mask) == fast.accuracy(mask), unit.name
        finally:
            fast.close()
    # Hooks are gone: the model is exactly as before.
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), y)
        assert torch.equal(live(x).argmax(1), y)


def test_prefix_cut_skips_the_units_own_layers() -> None:
    """For a plain conv unit the cached frontier is the post-ReLU map (conv+BN+ReLU skipped)."""
    model = _randomised("vgg-small")
    unit = find_units(model, torch.zeros(1, 1, 16, 16))[3]
    prefix, _suffix, is_pre = split_at_frontier(model, unit)
    (out,) = prefix(torch.zeros(2, 1, 16, 16))
    assert is_pre == [True]
    # the frontier is after the max-pool that follows features.10's ReLU (8x8 -> 4x4)
    assert unit.name == "features.10"
    assert out.shape == (2, unit.channels, 4, 4)


@pytest.mark.parametrize("name", ["vgg-small", "resnet20", "mobilenetv2-small"])
def test_adaptive_bn_fast_path_matches_naive_path(name: str) -> None:
    model = _randomised(name)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 1, 16, 16, generator=g)
    calib = torch.randn(48, 1, 16, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for unit in find_units(model, x[:1])[::2]:
        mask = (torch.rand(unit.channels, generator=g) > 0.4).float()
        mask[0] = 1
        naive = NaiveScorer(model, unit, x, y, 16, calib_x=calib)
        fast = PrefixScorer(model, unit, x, y, 16, calib_x=calib)
        masked = MaskedScorer(model, unit, x, y, 16, calib_x=calib)
        try:
            a, b, c = naive.logits(mask), fast.logits(mask), masked.logits(mask)
            assert torch.allclose(a, b, atol=1e-4), unit.name
            assert torch.allclose(c, b, atol=1e-4), unit.name
            # adapting BN changes the answer (stale statistics are what it fixes)
            stale = PrefixScorer(model, unit, x, y, 16)
            assert not torch.allclose(b, stale.logits(mask))
            stale.close()
        finally:
            fast.close()
            masked.close()
    # statistics restored exactly afterwards
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batched_scoring_equals_one_by_one() -> None:
    model = _randomised("resnet20")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(70, 1, 16, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    for unit in find_units(model, x[:1])[:4]:
        masks = (torch.rand(5, unit.channels, generator=g) > 0.5).float()
        fast = PrefixScorer(model, unit, x, y, 32)
        one_by_one = torch.tensor([fast.accuracy(m) for m in masks], dtype=torch.float64)
        assert torch.equal(fast.accuracies(masks), one_by_one), unit.name
        fast.close()


def test_masked_scorer_and_fallback_agree() -> None:
    model = _randomised("resnet20")
    x = torch.randn(40, 1, 16, 16)
    y = torch.randint(0, 10, (40,))
    unit = find_units(model, x[:1])[0]
    mask = torch.ones(unit.channels)
    mask[::2] = 0
    masked = MaskedScorer(model, unit, x, y, 16)
    fast = make_scorer(model, unit, x, y, 16, fast=True)
    assert isinstance(fast, PrefixScorer)
    assert masked.accuracy(mask) == fast.accuracy(mask)
    masked.close()
    fast.close()


def test_cache_cap_uses_fp16_then_subsamples(caplog) -> None:
    caplog.set_level(logging.INFO)
    model = _randomised("vgg-small")
    x = torch.randn(200, 1, 16, 16)
    y = torch.randint(0, 10, (200,))
    unit = find_units(model, x[:1])[1]
    full = PrefixScorer(model, unit, x, y, 50)
    size = full.cache_mb
    full.close()
    half = PrefixScorer(model, unit, x, y, 50, cache_mb=size * 0.6)
    assert not half.exact and half.n == 200 and "fp16" in caplog.text
    half.close()
    tiny = PrefixScorer(model, unit, x, y, 50, cache_mb=size * 0.2)
    assert tiny.n < 200 and tiny.cache_mb <= size * 0.2 + 1e-6 and "subsampled" in caplog.text
    tiny.close()


def test_untraceable_model_falls_back(caplog) -> None:
    class Dynamic(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.classifier = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.bn(self.conv(x)).relu()
            if h.sum() > 0:  # data-dependent control flow: fx cannot trace this
                h = h * 1.0
            return self.classifier(h.mean((2, 3)))

    model = Dynamic().eval()
    x = torch.randn(8, 1, 8, 8)
    unit = find_units(model, x[:1])[0]
    scorer = make_scorer(model, unit, x, torch.zeros(8, dtype=torch.long), 4)
    assert isinstance(scorer, MaskedScorer) and "cannot trace" in caplog.text
    scorer.close()
    mods = dict(model.named_modules())
    assert not any(m._forward_hooks for m in model.modules())  # close() left no hook behind
    before = model(x)
    with UnitMask(model, unit) as um:
        assert all(len(mods[n]._forward_hooks) == 1 for n in unit.producers)
        assert torch.equal(model(x), before)  # no mask set yet: a no-op
        um.set(torch.zeros(unit.channels))
        zeroed = model(x)
    # Every channel zeroed: the classifier sees zeros, so the logits are its bias.
    assert torch.allclose(zeroed, model.classifier.bias.expand_as(zeroed))
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(model(x), before)


def test_stderr_binomial() -> None:
    assert accuracy_stderr(50.0, 100) == pytest.approx(5.0)
    assert accuracy_stderr(100.0, 100) == 0.0
