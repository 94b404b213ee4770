"""Datasets for rlprune: loaders, normalised in-memory splits and fast batch iteration.

Typical use::

    from rlprune.data import batches, load_dataset

    ds = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    for x, y in batches(ds.train, 256, shuffle=True, generator=g, augment=True, hflip=ds.hflip):
        ...  # x: float32 [B, C, H, W], y: int64 [B]
"""

from __future__ import annotations

from rlprune.data.batches import augment_batch, batches
from rlprune.data.cifar import SafeUnpickler, find_cifar10, read_cifar10
from rlprune.data.folder import ImageFolderData, read_image_folder
from rlprune.data.idx import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_SHA256,
    FASHION_MNIST_URL,
    download_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist_arrays,
    read_idx,
    user_cache_dir,
)
from rlprune.data.registry import DATASETS, load_dataset, make_synthetic
from rlprune.data.types import DatasetSplits, Split

__all__ = [
    "DATASETS",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_URL",
    "DatasetSplits",
    "ImageFolderData",
    "SafeUnpickler",
    "Split",
    "augment_batch",
    "batches",
    "download_fashion_mnist",
    "find_cifar10",
    "find_fashion_mnist",
    "load_dataset",
    "load_fashion_mnist_arrays",
    "make_synthetic",
    "read_cifar10",
    "read_idx",
    "read_image_folder",
    "user_cache_dir",
]
