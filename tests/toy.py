"""A hand-built model whose useless filters are known exactly (shared by agent/search tests)."""

import torch
from torch import nn

from rlprune.data import Split


class ToyNet(nn.Module):
    """4-class toy: conv filters 0-3 copy input channel k (class k's detector); 4-7 are zero.

    Class k images have channel k bright, so removing filter k misclassifies all of class k
    (a 25 pp drop), while removing any of filters 4-7 changes nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, 4, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.classifier.weight.zero_()
            for k in range(4):
                self.conv.weight[k, k] = 1.0
                self.classifier.weight[k, k] = 1.0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.relu(self.bn(self.conv(x)))), 1))


def toy_split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.rand(n, 4, 4, 4, generator=g) * 0.1
    x[torch.arange(n), y] += 1.0
    return Split(x, y)


class Logged(nn.Module):
    """An identity model whose forward appends ``name`` to ``log`` (to check call order)."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return x


def blocks(log: list[str]) -> list[str]:
    """``log`` with runs of the same name collapsed to one entry."""
    return [n for i, n in enumerate(log) if i == 0 or log[i - 1] != n]
