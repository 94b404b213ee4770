"""``load_dataset``: one entry point for every supported dataset.

Each loader produces raw arrays (images ``[N, C, H, W]`` plus int64 labels); this module then
carves a seeded validation split off the training data, optionally truncates the training part,
computes per-channel mean/std on the training part only, and normalises every split with them.

The test split of datasets without an official one (``digits``, ``image-folder`` without
``test/``) and the ``synthetic`` data itself are drawn with fixed seeds, so the test set never
depends on the ``seed`` argument; ``seed`` only changes the validation carve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlprune.data.cifar import CIFAR10_CLASSES, find_cifar10, read_cifar10
from rlprune.data.folder import read_image_folder
from rlprune.data.idx import (
    download_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist_arrays,
    user_cache_dir,
)
from rlprune.data.types import DatasetSplits, Split
from rlprune.errors import DataError

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "TEST_HOLDOUT_FRACTION",
    "load_dataset",
    "make_synthetic",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "image-folder", "digits", "synthetic")
"""Names accepted by :func:`load_dataset`."""

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
TEST_HOLDOUT_FRACTION = 0.2
"""Fraction held out as test data for datasets that ship without a test split."""

_HOLDOUT_SEED = 20_240_601
_SYNTH_SEED = 1_234
_SYNTH_TRAIN, _SYNTH_TEST, _SYNTH_SIZE, _SYNTH_CLASSES = 800, 200, 16, 4
_STAT_CHUNK = 8192
_MIN_STD = 1e-6


@dataclass(frozen=True)
class _Raw:
    """Raw arrays from a loader; pixel values divided by ``scale`` lie in [0, 1]."""

    x_train: np.ndarray  # [N, C, H, W]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray  # [M, C, H, W]
    y_test: np.ndarray  # int64 [M]
    num_classes: int
    scale: float
    hflip: bool
    class_names: tuple[str, ...] = ()


def _holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (kept, held-out) sorted index arrays; ``round(n*fraction)`` held."""
    perm = np.random.default_rng(seed).permutation(n)
    n_held = int(round(n * fraction))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def _load_fashion_mnist(data_dir: str | Path | None, download: bool) -> _Raw:
    try:
        root = find_fashion_mnist(data_dir)
    except DataError:
        if not download:
            raise
        dest = Path(data_dir) if data_dir is not None else user_cache_dir() / "fashion-mnist"
        root = download_fashion_mnist(dest)
    x_tr, y_tr, x_te, y_te = load_fashion_mnist_arrays(root)
    return _Raw(x_tr, y_tr, x_te, y_te, 10, 255.0, True, FASHION_MNIST_CLASSES)


def _load_cifar10(data_dir: str | Path | None, download: bool) -> _Raw:
    try:
        root = find_cifar10(data_dir)
    except DataError as exc:
        if download:
            raise DataError(f"{exc} (--download is only implemented for fashion-mnist)") from exc
        raise
    x_tr, y_tr, x_te, y_te = read_cifar10(root)
    return _Raw(x_tr, y_tr, x_te, y_te, 10, 255.0, True, CIFAR10_CLASSES)


def _load_image_folder(
    data_dir: str | Path | None, download: bool, input_size: tuple[int, int] | None = None
) -> _Raw:
    if data_dir is None:
        raise DataError("image-folder needs --data-dir DIR with DIR/train/<class>/<image>.png")
    data = read_image_folder(data_dir, input_size)
    if data.x_test is None or data.y_test is None:
        keep, held = _holdout(len(data.y_train), TEST_HOLDOUT_FRACTION, _HOLDOUT_SEED)
        x_tr, y_tr = data.x_train[keep], data.y_train[keep]
        x_te, y_te = data.x_train[held], data.y_train[held]
    else:
        x_tr, y_tr, x_te, y_te = data.x_train, data.y_train, data.x_test, data.y_test
    return _Raw(x_tr, y_tr, x_te, y_te, len(data.class_names), 255.0, True, data.class_names)


def _load_digits(data_dir: str | Path | None, download: bool) -> _Raw:
    from sklearn.datasets import load_digits  # slow import, only when needed

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)[:, None, :, :]  # 0..16 grey levels
    labels = np.asarray(bunch.target, dtype=np.int64)
    keep, held = _holdout(len(labels), TEST_HOLDOUT_FRACTION, _HOLDOUT_SEED)
    names = tuple(str(n) for n in bunch.target_names)
    return _Raw(images[keep], labels[keep], images[held], labels[held], 10, 16.0, False, names)


def make_synthetic() -> tuple[np.ndarray, np.ndarray]:
    """Generate the fixed ``synthetic`` dataset (train and test together).

    Class ``k`` in ``0..3`` has a bright 8x8 quadrant ``k`` (row-major: top-left, top-right,
    bottom-left, bottom-right) of random brightness on a noisy background, so a small CNN learns
    it to >90% accuracy in a few epochs. Horizontal flips would swap classes, so ``hflip=False``.

    Returns:
        ``(images, labels)``: float32 ``[1000, 1, 16, 16]`` in [0, 1] and int64 ``[1000]``.
    """
    rng = np.random.default_rng(_SYNTH_SEED)
    n, s = _SYNTH_TRAIN + _SYNTH_TEST, _SYNTH_SIZE
    labels = rng.permutation(np.arange(n) % _SYNTH_CLASSES).astype(np.int64)
    images = 0.3 + rng.normal(0.0, 0.15, size=(n, 1, s, s))
    half = s // 2
    quadrants = np.zeros((_SYNTH_CLASSES, 1, s, s))
    for k in range(_SYNTH_CLASSES):
        r, c = divmod(k, 2)
        quadrants[k, :, r * half : (r + 1) * half, c * half : (c + 1) * half] = 1.0
    bright = rng.uniform(0.35, 0.7, size=(n, 1, 1, 1))
    images += bright * quadrants[labels]
    return np.clip(images, 0.0, 1.0).astype(np.float32), labels


def _load_synthetic(data_dir: str | Path | None, download: bool) -> _Raw:
    images, labels = make_synthetic()
    t = _SYNTH_TRAIN
    return _Raw(
        images[:t],
        labels[:t],
        images[t:],
        labels[t:],
        _SYNTH_CLASSES,
        1.0,
        False,
        ("top-left", "top-right", "bottom-left", "bottom-right"),
    )


_LOADERS: dict[str, Callable[[str | Path | None, bool], _Raw]] = {
    "fashion-mnist": _load_fashion_mnist,
    "cifar10": _load_cifar10,
    "image-folder": _load_image_folder,
    "digits": _load_digits,
    "synthetic": _load_synthetic,
}


def _channel_stats(x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of ``x / scale`` for ``x`` ``[N, C, H, W]``.

    Accumulates in float64 over chunks of images so no full float64 copy is made.
    """
    c = x.shape[1]
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    for start in range(0, x.shape[0], _STAT_CHUNK):
        chunk = x[start : start + _STAT_CHUNK].astype(np.float64) / scale
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += np.square(chunk).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    if np.any(std < _MIN_STD):
        logger.warning("constant input channel(s) in the training data; using std=1 for them")
        std = np.where(std < _MIN_STD, 1.0, std)
    return mean, std


def _to_split(
    x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float
) -> Split:
    """Normalise uint8/float images ``[N, C, H, W]`` into a float32 :class:`Split`."""
    t = torch.from_numpy(np.array(x, dtype=np.float32, order="C"))  # always a private copy
    m = torch.tensor(mean * scale, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std * scale, dtype=torch.float32).view(1, -1, 1, 1)
    t.sub_(m).div_(s)
    return Split(t, torch.from_numpy(np.array(y, dtype=np.int64)))


def _check_labels(name: str, part: str, y: np.ndarray, num_classes: int) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{name} {part} labels must be in 0..{num_classes - 1}")


def _cap_train(name: str, idx: np.ndarray, shape: tuple[int, ...], max_mb: float) -> np.ndarray:
    """The first training indices whose float32 images fit in ``max_mb`` MiB."""
    if max_mb <= 0:
        raise DataError(f"the data memory cap must be > 0 MiB, got {max_mb}")
    per_image = 4 * int(np.prod(shape[1:]))
    fit = int(max_mb * 2**20 // per_image)
    if fit < len(idx):
        logger.info(
            "%s: %d training images (%.0f MiB) exceed the %.0f MiB cap: using %d",
            name,
            len(idx),
            len(idx) * per_image / 2**20,
            max_mb,
            fit,
        )
    return idx[:fit]


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    max_mb: float | None = None,
    input_size: tuple[int, int] | None = None,
) -> DatasetSplits:
    """Load a dataset as normalised train/val/test tensors.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Where to look for files first (required for ``image-folder``).
        download: Download Fashion-MNIST (SHA-256 verified) if it is not found locally, into
            ``data_dir`` if given, else ``$XDG_CACHE_HOME/rlprune/fashion-mnist``.
        val_fraction: Fraction of the training data carved off as validation, in (0, 0.5].
        seed: Seed of the validation carve (the test split never depends on it).
        max_train: If given, keep only this many training examples (after the carve), chosen
            by the same seeded permutation.
        max_mb: Memory cap (MiB) of the float32 training tensor; above it the training part is
            subsampled (same permutation) and a log line says so. Val and test are never cut.
        input_size: ``(H, W)`` of the model: image-folder images are resized to it, one by one.

    Returns:
        A :class:`DatasetSplits` whose splits hold float32 ``[N, C, H, W]`` images normalised
        with the train part's per-channel mean/std and int64 ``[N]`` labels.

    Raises:
        DataError: for an unknown name, bad arguments, missing or corrupt files, or a split with
            fewer than 2 examples.
    """
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if not 0.0 < val_fraction <= 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5], got {val_fraction}")
    if max_train is not None and max_train < 2:
        raise DataError(f"max_train must be at least 2, got {max_train}")
    if name == "image-folder":
        raw = _load_image_folder(data_dir, download, input_size)
    else:
        raw = _LOADERS[name](data_dir, download)
    for part, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(f"{name} {part}: images {x.shape} and labels {y.shape} do not match")
        _check_labels(name, part, y, raw.num_classes)

    perm = np.random.default_rng(seed).permutation(raw.x_train.shape[0])
    n_val = int(round(len(perm) * val_fraction))
    val_idx, train_idx = np.sort(perm[:n_val]), perm[n_val:]
    if max_train is not None:
        train_idx = train_idx[:max_train]
    if max_mb is not None:
        train_idx = _cap_train(name, train_idx, raw.x_train.shape, max_mb)
    sizes = {"train": len(train_idx), "val": len(val_idx), "test": raw.x_test.shape[0]}
    small = {k: v for k, v in sizes.items() if v < 2}
    if small:
        raise DataError(
            f"{name}: too few examples ({', '.join(f'{k}={v}' for k, v in small.items())}); "
            "every split needs at least 2, add data or lower val_fraction"
        )
    x_train = raw.x_train[train_idx]
    mean, std = _channel_stats(x_train, raw.scale)
    splits = DatasetSplits(
        name=name,
        train=_to_split(x_train, raw.y_train[train_idx], mean, std, raw.scale),
        val=_to_split(raw.x_train[val_idx], raw.y_train[val_idx], mean, std, raw.scale),
        test=_to_split(raw.x_test, raw.y_test, mean, std, raw.scale),
        num_classes=raw.num_classes,
        in_channels=int(raw.x_train.shape[1]),
        input_size=(int(raw.x_train.shape[2]), int(raw.x_train.shape[3])),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        hflip=raw.hflip,
        class_names=raw.class_names,
    )
    logger.info("loaded %s", splits.summary())
    return splits
