"""Fast in-memory mini-batch iteration with batched (vectorised) augmentation."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from rlprune.data.types import Split
from rlprune.errors import ConfigError

__all__ = ["augment_batch", "batches"]


def augment_batch(
    x: torch.Tensor, *, hflip: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random-crop (with zero padding) and optionally horizontally flip a whole batch at once.

    Every image is shifted by an independent random offset in ``[-p, p]`` pixels per axis, with
    ``p = max(1, H // 8)``, and the uncovered border is filled with zeros (the dataset mean,
    since images are normalised). With ``hflip`` each image is mirrored with probability 1/2.
    All randomness comes from ``generator`` (the global RNG if ``None``); there is no Python loop
    over samples.

    Args:
        x: float tensor ``[B, C, H, W]``.
        hflip: Whether to apply random horizontal flips.
        generator: Source of randomness.

    Returns:
        A new tensor ``[B, C, H, W]`` with the same dtype and device as ``x``.
    """
    b, c, h, w = x.shape
    p = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (p, p, p, p))  # [B, C, H+2p, W+2p]
    offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device)
    rows = offsets[0].view(b, 1) + torch.arange(h, device=x.device).view(1, h)  # [B, H]
    cols = offsets[1].view(b, 1) + torch.arange(w, device=x.device).view(1, w)  # [B, W]
    row_idx = rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * p)
    out = padded.gather(2, row_idx)  # [B, C, H, W+2p]
    col_idx = cols.view(b, 1, 1, w).expand(b, c, h, w)
    out = out.gather(3, col_idx)  # [B, C, H, W]
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        out = torch.where(flip.to(x.device).view(b, 1, 1, 1), out.flip(3), out)
    return out


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: bool = False,
    hflip: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over a split in mini-batches.

    Each example is yielded exactly once per call (one epoch). Without ``shuffle`` the order is
    the split's order and, without ``augment``, batches are views of the split's tensors (do
    not modify them in place).

    Args:
        split: The examples to iterate over.
        batch_size: Examples per batch (the last batch may be smaller).
        shuffle: Visit examples in a random order drawn from ``generator``.
        generator: Source of all randomness (shuffling and augmentation); the global RNG if
            ``None``. A generator with a fixed seed makes the epoch reproducible.
        augment: Apply :func:`augment_batch` (random crop, plus flips if ``hflip``).
        hflip: Allow random horizontal flips when augmenting; ignored without ``augment``.

    Yields:
        ``(x, y)`` with ``x`` float32 ``[B, C, H, W]`` and ``y`` int64 ``[B]``.

    Raises:
        ConfigError: if ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.images.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            x = split.images[start : start + batch_size]
            y = split.labels[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            x = split.images.index_select(0, idx)
            y = split.labels.index_select(0, idx)
        if augment:
            x = augment_batch(x, hflip=hflip, generator=generator)
        yield x, y
