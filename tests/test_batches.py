"""Tests of in-memory splits, batch iteration and augmentation (split from test_data.py)."""

from __future__ import annotations

import pytest
import torch

from rlprune.data import Split, augment_batch, batches
from rlprune.errors import ConfigError, DataError

# --------------------------------------------------------------------------- Split / batches


def _indexed_split(n: int, shape=(1, 8, 8)) -> Split:
    images = torch.rand((n, *shape), generator=torch.Generator().manual_seed(0)) + 1.0
    return Split(images, torch.arange(n))


def test_split_validation_and_subset() -> None:
    with pytest.raises(DataError):
        Split(torch.zeros(3, 1, 2, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        Split(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64))
    s = _indexed_split(50)
    a, b = s.subset(10, seed=3), s.subset(20, seed=3)
    assert len(a) == 10 and torch.equal(a.labels, b.labels[:10])
    assert len(set(a.labels.tolist())) == 10 and not torch.equal(a.labels, torch.arange(10))
    assert len(s.subset(500)) == 50 and "n=50" in repr(s)
    with pytest.raises(DataError):
        s.subset(0)


def test_batches_cover_each_sample_once_and_are_deterministic() -> None:
    s = _indexed_split(50)
    plain = list(batches(s, 16))
    assert [len(y) for _, y in plain] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([y for _, y in plain]), torch.arange(50))
    runs = [
        [y for _, y in batches(s, 7, shuffle=True, generator=torch.Generator().manual_seed(k))]
        for k in (5, 5, 6)
    ]
    seen = torch.cat(runs[0])
    assert sorted(seen.tolist()) == list(range(50)) and not torch.equal(seen, torch.arange(50))
    assert all(torch.equal(p, q) for p, q in zip(runs[0], runs[1], strict=True))
    assert not torch.equal(seen, torch.cat(runs[2]))
    for x, y in batches(s, 7, shuffle=True, generator=torch.Generator().manual_seed(5)):
        assert torch.equal(x, s.images[y])  # images stay paired with their labels
    with pytest.raises(ConfigError):
        next(batches(s, 0))


def _shift(x: torch.Tensor, dy: int, dx: int, p: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    return padded[..., p + dy : p + dy + h, p + dx : p + dx + w]


def _kinds(out: torch.Tensor, x: torch.Tensor, p: int) -> list[str]:
    """For each image: 'plain' if out is a shifted x, 'flip' if a shifted mirrored x."""
    kinds = []
    for o, xi in zip(out, x, strict=True):
        shifts = [(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)]
        if any(torch.equal(o, _shift(xi, dy, dx, p)) for dy, dx in shifts):
            kinds.append("plain")
        elif any(torch.equal(o, _shift(xi.flip(-1), dy, dx, p)) for dy, dx in shifts):
            kinds.append("flip")
        else:
            kinds.append("neither")
    return kinds


def test_augment_shapes_crops_and_flips() -> None:
    s = _indexed_split(64, shape=(2, 8, 8))
    x0, _ = next(batches(s, 64))
    xa, _ = next(batches(s, 64, augment=True, generator=torch.Generator().manual_seed(1)))
    assert xa.shape == x0.shape and xa.dtype == torch.float32
    assert set(_kinds(xa, x0, p=1)) == {"plain"}  # hflip=False: never mirrored
    assert (xa == 0).any()  # some padding became visible: images were shifted
    gen = torch.Generator().manual_seed(1)
    xf, _ = next(batches(s, 64, augment=True, hflip=True, generator=gen))
    kinds = _kinds(xf, x0, p=1)
    assert "neither" not in kinds and 10 < kinds.count("flip") < 54
    xn, _ = next(batches(s, 64, hflip=True))
    assert torch.equal(xn, x0)  # hflip without augment changes nothing
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a1, a2 = (
        augment_batch(x0, hflip=True, generator=g1),
        augment_batch(x0, hflip=True, generator=g2),
    )
    assert torch.equal(a1, a2)
    big = torch.rand(4, 3, 32, 32)
    assert _kinds(augment_batch(big), big, p=4).count("plain") == 4  # pad = H // 8
