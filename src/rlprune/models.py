"""Model zoo: small CIFAR/MNIST-style CNNs with an explicit registry.

Every model takes 1- or 3-channel inputs of any size >= 8x8 (global average pooling before the
classifier) and exposes its final layer as ``classifier`` so that pruning never touches it.
Forward passes never read channel counts at run time, so physically pruned models keep working.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from rlprune.errors import ConfigError

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "is_channels_last",
    "set_layout",
    "training_layout",
]


def _ch(base: int, width: float) -> int:
    """Channel count ``base * width``, at least 4 (keeps tiny widths usable in tests)."""
    return max(4, int(round(base * width)))


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class VGG(nn.Module):
    """VGG-style plain CNN: conv-BN-ReLU stacks, max-pools ("M"), GAP, linear classifier.

    Args:
        cfg: layer plan; ints are conv widths, ``"M"`` a 2x2 max-pool (``ceil_mode`` so that
            small inputs such as 8x8 survive five pools).
        in_channels: input channels (1 or 3).
        num_classes: classifier outputs.

    Shapes: ``x [B, in_channels, H, W] -> logits [B, num_classes]``.
    """

    def __init__(self, cfg: list[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                assert isinstance(item, int)
                layers += _conv_bn_relu(cin, item)
                cin = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block; 1x1 conv + BN shortcut (option B) when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 3 stages of ``n`` basic blocks, 16/32/64 channels.

    Shapes: ``x [B, in_channels, H, W] -> logits [B, num_classes]``.
    """

    def __init__(self, depth: int, in_channels: int, num_classes: int, width: float) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"resnet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [_ch(16, width), _ch(32, width), _ch(64, width)]
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, widths[0]))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection (+ residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        # Decided once at construction: forward never compares channel counts at run time.
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden)]
            layers.append(nn.ReLU6(inplace=True))
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2Small(nn.Module):
    """A small MobileNetV2 (Sandler et al. 2018) for 28-32 px inputs.

    Shapes: ``x [B, in_channels, H, W] -> logits [B, num_classes]``.
    """

    # (expansion t, output channels c, repeats n, first stride s)
    PLAN = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2))

    def __init__(self, in_channels: int, num_classes: int, width: float) -> None:
        super().__init__()
        cin = _ch(32, width)
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, cin))
        blocks: list[nn.Module] = []
        for t, c, n, s in self.PLAN:
            cout = _ch(c, width)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        last = _ch(256, width)
        self.head = nn.Sequential(
            nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _vgg(cfg: list[int | str]) -> Callable[[int, int, float], nn.Module]:
    def make(in_channels: int, num_classes: int, width: float) -> nn.Module:
        scaled = [c if c == "M" else _ch(int(c), width) for c in cfg]
        return VGG(scaled, in_channels, num_classes)

    return make


def _resnet(depth: int) -> Callable[[int, int, float], nn.Module]:
    return lambda cin, ncls, width: ResNet(depth, cin, ncls, width)


# Explicit registry: name -> constructor(in_channels, num_classes, width).
MODELS: dict[str, Callable[[int, int, float], nn.Module]] = {
    "vgg-small": _vgg([32, 32, "M", 64, 64, "M", 128, 128, "M"]),
    "vgg11-bn": _vgg([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]),
    "vgg16-bn": _vgg(
        [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    ),
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
    "mobilenetv2-small": lambda cin, ncls, width: MobileNetV2Small(cin, ncls, width),
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a zoo model (stored in checkpoints as plain types)."""

    name: str
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    width: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ConfigError(f"unknown model {self.name!r}; valid: {', '.join(MODELS)}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if min(self.input_size) < 8:
            raise ConfigError(f"input_size must be >= 8x8, got {self.input_size}")
        if not 0 < self.width <= 4:
            raise ConfigError(f"width must be in (0, 4], got {self.width}")

    def build(self) -> nn.Module:
        """Instantiate the (unpruned, randomly initialised) model."""
        return MODELS[self.name](self.in_channels, self.num_classes, self.width)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        try:
            return cls(
                name=str(d["name"]),
                in_channels=int(d["in_channels"]),
                num_classes=int(d["num_classes"]),
                input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
                width=float(d.get("width", 1.0)),
            )
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise ConfigError(f"invalid model spec {d!r}: {e}") from e

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero input ``[batch, in_channels, H, W]`` for tracing and MAC counting."""
        return torch.zeros(batch, self.in_channels, *self.input_size)


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int] | int,
    width: float = 1.0,
) -> nn.Module:
    """Build a zoo model by name.

    Args:
        name: one of :data:`MODELS`.
        in_channels: 1 or 3.
        num_classes: number of classifier outputs.
        input_size: ``(H, W)`` or a single int, each >= 8.
        width: channel multiplier.

    Returns:
        The model; ``model(x [B, in_channels, H, W]) -> [B, num_classes]``.
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    return ModelSpec(name, in_channels, num_classes, (int(size[0]), int(size[1])), width).build()


def set_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """Put every 4-D parameter and buffer of ``model`` in NHWC (or back in NCHW), in place.

    With NHWC weights, convolutions write NHWC activations and oneDNN takes its faster CPU
    kernels for pooling and convolutions (measured by bench/layout.py; the figures, and the
    machine they hold for, are in docs/BENCHMARKS.md). Values are unchanged; results agree
    with NCHW to float rounding. :func:`rlprune.pruning.remove_channels` and
    :func:`rlprune.checkpoint.apply_shapes` keep whichever layout the model has.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(memory_format=fmt)  # type: ignore[call-overload]  # missing from the stubs


# oneDNN's 1x1 backward-weights kernel with NHWC tensors writes past its workspace when a
# strided 1x1 conv has fewer input channels than its channel block (8 on AVX2, 16 on AVX-512):
# a segfault with one thread, a hang with two, wrong gradients elsewhere (oneDNN's report "1x1
# convolution backward_weights writes past the rtus workspace"; reproduced on an AVX2 EPYC
# with torch 2.13, tests/test_train.py). Pruning narrows a ResNet's
# downsampling shortcut to just such widths. NCHW weight and input take another kernel.
_ONEDNN_IC_BLOCK = 16


def _narrow_strided_1x1(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and max(m.stride) > 1
        and m.in_channels < _ONEDNN_IC_BLOCK
        and m.weight.device.type == "cpu"
    )


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """``t`` with NCHW strides exactly: ``.contiguous()`` keeps an NHWC ``[N, 1, H, W]`` as it
    is (size-1 dims do not count), and oneDNN would still read it as NHWC."""
    want = torch.empty_like(t, memory_format=torch.contiguous_format).stride()
    return t if t.stride() == want else t.clone(memory_format=torch.contiguous_format)


def _nchw_input(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (_nchw(args[0]), *args[1:])


@contextmanager
def training_layout(model: nn.Module) -> Iterator[nn.Module]:
    """Train ``model`` in its own layout, except its strided 1x1 convs with fewer than 16 input
    channels, whose weight and input have NCHW strides inside the block (see the note above);
    on exit their weights (and grads) are copied back into tensors of their own strides, so the
    layout is as it was and optimizers keep the same parameters."""
    swapped: list[tuple[nn.Conv2d, torch.Tensor]] = []
    hooks = []
    try:
        for m in model.modules():
            if _narrow_strided_1x1(m):
                assert isinstance(m, nn.Conv2d)
                hooks.append(m.register_forward_pre_hook(_nchw_input))
                nchw = _nchw(m.weight.data)
                if nchw is not m.weight.data:
                    swapped.append((m, m.weight.data))
                    m.weight.data = nchw
        yield model
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for m, own in swapped:
                own.copy_(m.weight.data)
                m.weight.data = own
                if m.weight.grad is not None:
                    m.weight.grad = torch.empty_like(own).copy_(m.weight.grad)  # own's strides


def runs_channels_last(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether ``model``'s forward works in NHWC: a ``.view`` of a conv output, common in
    users' heads (``x.view(n, -1)``), needs NCHW-contiguous activations and raises otherwise.
    Tried on a copy with ``example`` ``[1, C, H, W]``."""
    probe = set_layout(copy.deepcopy(model), True).eval()
    try:
        with torch.no_grad():
            probe(example.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        return False
    return True


def is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s 4-D tensors carry NHWC strides (as :func:`set_layout` leaves them).

    Strides are compared exactly, size-1 dims included: a ``[C, 1, 3, 3]`` stem or an
    ``[O, I, 1, 1]`` pointwise weight is contiguous in both senses, but oneDNN picks its kernels
    from the strides, so they still tell the layout.
    """
    for t in [*model.parameters(), *model.buffers()]:
        if t.dim() == 4:
            nhwc = t.stride() == torch.empty_like(t, memory_format=torch.channels_last).stride()
            nchw = t.stride() == torch.empty_like(t, memory_format=torch.contiguous_format).stride()
            if nhwc != nchw:
                return nhwc
    return False
