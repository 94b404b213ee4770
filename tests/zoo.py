"""Conformance zoo: one tiny CNN per topology a user's own model may have (3x8x8 in, 4 classes).

Mirrors the couplings torch-pruning's own test models cover (concat, split, grouped and
depthwise convs, residual adds, gates, flatten, adaptive pooling, several heads), written the
way users write them: functional ops, ``torch.add``, ``+=``, Python control flow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

IN, SIZE, CLASSES = 3, 8, 4


def cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    """conv -> BN -> ReLU, same spatial size."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class Head(nn.Module):
    """Global average pool -> linear classifier."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConcatDepthwise(nn.Module):
    """Two branches joined by ``torch.cat``, feeding a depthwise-separable block."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(IN, 8, 3, padding=1)
        self.b = nn.Conv2d(IN, 4, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.pw = nn.Conv2d(12, 8, 1)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        y = F.relu(self.bn(self.dw(y)))
        return self.head(F.relu(self.pw(y)))


class Dense(nn.Module):
    """DenseNet-style block: each layer's output concatenated onto the running features."""

    def __init__(self, growth: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IN, 6, 3, padding=1, bias=False)
        width = 6
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(
                nn.Sequential(
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                    nn.Conv2d(width, growth, 3, padding=1, bias=False),
                )
            )
            width += growth
        self.norm = nn.BatchNorm2d(width)
        self.head = Head(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.stem(x)
        for layer in self.layers:
            feats = torch.cat([feats, layer(feats)], 1)
        return self.head(F.relu(self.norm(feats)))


class SplitChunk(nn.Module):
    """One conv split in two halves (``torch.chunk`` and ``torch.split``), each half convolved."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(IN, 8)
        self.left = cbr(4, 6)
        self.right = cbr(4, 6)
        self.mix = nn.Conv2d(12, 8, 1)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        a, b = torch.chunk(y, 2, dim=1)
        z = torch.cat([self.left(a), self.right(b)], 1)
        p, q = torch.split(F.relu(self.mix(z)), [4, 4], dim=1)
        return self.head(torch.cat([q, p], 1))


class Grouped(nn.Module):
    """ResNeXt-style block: 1x1 -> grouped 3x3 (groups=4) -> 1x1, beside a 1x1 projection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(IN, 8)
        self.reduce = cbr(8, 8, 1)
        self.grouped = cbr(8, 8, 3, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.proj = nn.Sequential(nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.expand(self.grouped(self.reduce(x)))
        return self.head(F.relu(y + self.proj(x)))


class DepthwiseSeparable(nn.Module):
    """MobileNet-v1 style: depthwise 3x3 + pointwise 1x1, twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(IN, 8)
        self.dw1, self.pw1 = cbr(8, 8, 3, groups=8), cbr(8, 12, 1)
        self.dw2, self.pw2 = cbr(12, 12, 3, groups=12), cbr(12, 12, 1)
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw1(self.dw1(self.stem(x)))
        return self.head(self.pw2(self.dw2(x)))


class Residual(nn.Module):
    """Residual adds written three ways: identity ``+=``, ``torch.add``, 1x1 projection ``+``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(IN, 8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.proj = nn.Conv2d(8, 12, 1, stride=2)
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.c1(x)
        y += x
        y = F.relu(y)
        x = torch.add(F.relu(self.c2(y)), y)
        return self.head(F.relu(self.c3(x) + self.proj(x)))


class Gate(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(relu(fc1(pool(x)))))`` with 1x1 convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(IN, 8)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.out = cbr(8, 8)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(self.out(x * gate))


class FlattenLinear(nn.Module):
    """LeNet-style: conv -> max pool -> conv -> flatten ``C*H*W`` -> linear -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(IN, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.relu(self.c2(x))
        return self.fc2(F.relu(self.fc1(x.reshape(x.size(0), -1))))


class AdaptivePool(nn.Module):
    """Adaptive average and max pooling to 2x2, flattened into a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(IN, 8)
        self.c2 = cbr(8, 6)
        self.pool = nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(6 * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c2(F.adaptive_avg_pool2d(self.c1(x), 4))
        return self.fc(torch.flatten(self.pool(x), 1))


class TwoHeads(nn.Module):
    """Two classifier heads on different depths of the trunk, their logits averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(IN, 8)
        self.c2 = cbr(8, 8)
        self.aux = nn.Linear(8, CLASSES)
        self.main = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c1(x)
        b = self.c2(a)
        pa = torch.flatten(F.adaptive_avg_pool2d(a, 1), 1)
        pb = torch.flatten(F.adaptive_avg_pool2d(b, 1), 1)
        return (self.aux(pa) + self.main(pb)) / 2


class ControlFlow(nn.Module):
    """Python control flow on a shape: ``torch.fx`` cannot trace it (full forward passes);
    ``torch.export`` specialises it (the spatial size is fixed)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(IN, 8)
        self.c2 = cbr(8, 8)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        if y.shape[-1] >= 4:  # fx: a Proxy cannot decide an if
            y = self.c2(y)
        return self.head(y)


ZOO: dict[str, Callable[[], nn.Module]] = {
    "concat-depthwise": ConcatDepthwise,
    "dense": Dense,
    "split-chunk": SplitChunk,
    "grouped": Grouped,
    "depthwise-separable": DepthwiseSeparable,
    "residual": Residual,
    "gate": Gate,
    "flatten-linear": FlattenLinear,
    "adaptive-pool": AdaptivePool,
    "two-heads": TwoHeads,
    "control-flow": ControlFlow,
}


def build(name: str, seed: int = 0) -> nn.Module:
    """Zoo model ``name`` with seeded weights and randomised BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ZOO[name]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def example() -> torch.Tensor:
    """``[1, 3, 8, 8]``."""
    return torch.randn(1, IN, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
