"""Image-folder reader: ``root/{train,test}/<class>/<image>.{png,jpg,jpeg}`` via Pillow."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rlprune.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MAX_SIDE",
    "ImageFolderData",
    "read_image_folder",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image decoded (width x height, read from the header before decoding)."""

MAX_SIDE = 256
"""Without a model input size, images are resized to the first one's size, scaled down (aspect
kept) so that its longer side is at most this."""


@dataclass(frozen=True)
class ImageFolderData:
    """Decoded image-folder contents.

    Attributes:
        x_train: uint8 ``[N, C, H, W]`` training images (C = 1 greyscale or 3 RGB).
        y_train: int64 ``[N]`` class indices.
        x_test: uint8 ``[M, C, H, W]`` test images, or ``None`` if there is no ``test/``.
        y_test: int64 ``[M]`` test labels, or ``None``.
        class_names: Sorted class directory names; index ``k`` is label ``k``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]


def _list_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    items: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        cls_dir = split_dir / cls
        if not cls_dir.is_dir():
            continue
        for f in sorted(cls_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((f, label))
    return items


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{path}: image of {size[0]}x{size[1]} pixels exceeds the cap of "
            f"{MAX_IMAGE_PIXELS} pixels; scale it down first"
        )


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
    """Return ``(mode, (width, height))`` from the image header without decoding pixels."""
    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({str(exc)[:200]})") from exc
    _check_pixels(path, size)
    return mode, size


def _decode(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """Decode one image to ``mode`` and ``size`` (W, H); returns uint8 ``[C, H, W]``.

    Each image is resized on its own, so memory holds one full-size image at a time.
    """
    try:
        with Image.open(path) as img:
            _check_pixels(path, img.size)  # the file may have changed since the probe
            img.draft(mode, size)  # JPEG: decode at a reduced scale when that suffices
            img.load()
            conv = img.convert(mode)
            if conv.size != size:
                conv = conv.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(conv, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({str(exc)[:200]})") from exc
    return arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _stack(items: list[tuple[Path, int]], mode: str, size: tuple[int, int]) -> np.ndarray:
    channels = 1 if mode == "L" else 3
    out = np.empty((len(items), channels, size[1], size[0]), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        out[i] = _decode(path, mode, size)
    return out


def _target(first: tuple[int, int], input_size: tuple[int, int] | None) -> tuple[int, int]:
    """(W, H) every image is resized to: the model's input size, else the first image's size
    scaled down to :data:`MAX_SIDE`."""
    if input_size is not None:
        return int(input_size[1]), int(input_size[0])
    w, h = first
    scale = min(1.0, MAX_SIDE / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def read_image_folder(
    root: str | Path, input_size: tuple[int, int] | None = None
) -> ImageFolderData:
    """Read a class-per-subdirectory image tree.

    Layout: ``root/train/<class>/*.png|jpg|jpeg`` and optionally ``root/test/<class>/...``; if
    ``root/train`` does not exist, ``root`` itself holds the class directories (and there is no
    test part). Classes are the sorted names of the training class directories. Each image is
    resized (bilinear), one at a time, to ``input_size`` or else to the size of the first
    training image scaled down to :data:`MAX_SIDE`; an image above :data:`MAX_IMAGE_PIXELS` is
    refused from its header. Images are greyscale (C=1) if every image has mode ``"L"``,
    otherwise converted to RGB (C=3).

    Args:
        root: Dataset root directory.
        input_size: ``(H, W)`` of the model the data is for, if known.

    Returns:
        The decoded :class:`ImageFolderData`.

    Raises:
        DataError: if ``root`` is missing, has no class directories or images, a test class is not
            a training class, or an image cannot be decoded.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image-folder root {root} is not a directory; pass --data-dir DIR")
    train_dir = root / "train" if (root / "train").is_dir() else root
    test_dir = root / "test" if (root / "test").is_dir() and train_dir != root else None
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(
            f"{train_dir} has no class subdirectories; expected {root}/train/<class>/<image>.png"
        )
    train_items = _list_images(train_dir, classes)
    if not train_items:
        raise DataError(f"{train_dir} has no .png/.jpg/.jpeg images in its class directories")
    test_items: list[tuple[Path, int]] = []
    if test_dir is not None:
        unknown = sorted(set(_class_dirs(test_dir)) - set(classes))
        if unknown:
            raise DataError(f"{test_dir} has classes not present in {train_dir}: {unknown}")
        test_items = _list_images(test_dir, classes)
    all_items = train_items + test_items
    modes = set()
    first_size: tuple[int, int] | None = None
    for path, _ in all_items:
        mode, size = _probe(path)
        modes.add(mode)
        if first_size is None:
            first_size = size
    assert first_size is not None  # train_items is non-empty
    first_size = _target(first_size, input_size)
    mode = "L" if modes == {"L"} else "RGB"
    logger.info(
        "image-folder %s: %d classes, %d train / %d test images, mode %s, size %dx%d",
        root,
        len(classes),
        len(train_items),
        len(test_items),
        mode,
        first_size[1],
        first_size[0],
    )
    x_train = _stack(train_items, mode, first_size)
    y_train = np.array([lbl for _, lbl in train_items], dtype=np.int64)
    if test_dir is None:
        return ImageFolderData(x_train, y_train, None, None, tuple(classes))
    x_test = _stack(test_items, mode, first_size)
    y_test = np.array([lbl for _, lbl in test_items], dtype=np.int64)
    return ImageFolderData(x_train, y_train, x_test, y_test, tuple(classes))
