"""Value types shared by the dataset readers: one split of examples and a whole dataset."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlprune.errors import DataError

__all__ = ["DatasetSplits", "Split"]


@dataclass(frozen=True, eq=False, repr=False)
class Split:
    """One split (train, val or test) of an in-memory image-classification dataset.

    Attributes:
        images: float32 tensor of shape ``[N, C, H, W]``, already normalised with the mean/std of
            the training part of the dataset.
        labels: int64 tensor of shape ``[N]`` holding class indices in ``0..num_classes-1``.

    Raises:
        DataError: if the tensors have the wrong rank, dtype or disagree on ``N``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.float32:
            raise DataError(
                "Split.images must be a float32 tensor of shape [N, C, H, W], got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            raise DataError(
                "Split.labels must be an int64 tensor of shape [N], got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(
                f"Split has {self.images.shape[0]} images but {self.labels.shape[0]} labels; "
                "they must match"
            )

    def __len__(self) -> int:
        """Number of examples ``N``."""
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, image_shape={tuple(self.images.shape[1:])})"

    def subset(self, n: int, seed: int = 0) -> Split:
        """Return ``n`` examples drawn without replacement by a seeded permutation.

        The result is the first ``n`` entries of ``torch.randperm(len(self))`` under a generator
        seeded with ``seed``, so the same ``(n, seed)`` always selects the same examples and a
        smaller ``n`` gives a prefix of a larger one. ``n`` larger than the split is clamped.

        Args:
            n: Number of examples wanted (at least 1).
            seed: Seed of the permutation.

        Returns:
            A new :class:`Split` with ``images`` ``[min(n, N), C, H, W]`` and ``labels``
            ``[min(n, N)]`` (copies, not views).

        Raises:
            DataError: if ``n < 1``.
        """
        if n < 1:
            raise DataError(f"subset size must be at least 1, got {n}")
        n = min(n, len(self))
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=gen)[:n]
        return Split(self.images.index_select(0, idx), self.labels.index_select(0, idx))


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset split three ways plus the metadata a model and a training loop need.

    Attributes:
        name: Dataset name as passed to :func:`rlprune.data.load_dataset`.
        train: Training examples (the part left after the validation carve).
        val: Validation examples carved from the training data with a seeded permutation; used for
            rewards and model selection.
        test: Held-out examples, only for final reported numbers (never for rewards).
        num_classes: Number of classes ``K``; labels are in ``0..K-1``.
        in_channels: Image channels ``C`` (1 for greyscale, 3 for RGB).
        input_size: Image size ``(H, W)``.
        mean: Per-channel mean (length ``C``) of the train part, in [0, 1] pixel units.
        std: Per-channel standard deviation (length ``C``) of the train part.
        hflip: Whether horizontal-flip augmentation keeps labels valid for this dataset.
        class_names: Optional human-readable class names (length ``K``), empty if unknown.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    class_names: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line describing sizes and shapes, for logs."""
        h, w = self.input_size
        return (
            f"{self.name}: {self.num_classes} classes, {self.in_channels}x{h}x{w}, "
            f"train={len(self.train)} val={len(self.val)} test={len(self.test)}"
        )
