"""NCHW vs NHWC (channels_last) on this CPU: the kernels behind ``channels_last=true``.

Usage (also run by ``make bench``)::

    .venv/bin/python bench/layout.py

Prints, per layer shape of vgg-small / resnet20 on 28x28 inputs at batch 250, the time of a
2x2 max-pool and a 3x3 conv in both layouts (results agree to float rounding; the pool is
bit-exact), a masked conv against the same conv cut to the kept input channels, and the time
of one SGD step of each model at batch 128.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from rlprune.models import build_model, set_layout


def _ms(fn, *args, reps: int = 10) -> float:
    fn(*args)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, ceil_mode=True)


def _sgd_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


@torch.inference_mode()
def layers() -> None:
    print("| op | input | NCHW ms | NHWC ms | NCHW / NHWC | max abs diff | NHWC GMAC/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for c, hw in [(32, 28), (64, 14), (128, 7)]:
        x = torch.randn(250, c, hw, hw)
        xl = x.contiguous(memory_format=torch.channels_last)
        a, b = _ms(_pool, x), _ms(_pool, xl)
        d = (_pool(x) - _pool(xl)).abs().max()
        print(
            f"| max-pool 2x2 | 250x{c}x{hw}x{hw} | {a:.2f} | {b:.2f} | {a / b:.1f}x | {d:.0e} | |"
        )
    for cin, cout, hw in [(16, 16, 28), (32, 32, 28), (32, 64, 14), (64, 64, 14), (128, 128, 7)]:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False).eval()
        conv_l = set_layout(copy.deepcopy(conv), True)
        x = torch.randn(250, cin, hw, hw)
        xl = x.contiguous(memory_format=torch.channels_last)
        a, b = _ms(conv, x), _ms(conv_l, xl)
        d = (conv(x) - conv_l(xl)).abs().max()
        gmac = 250 * cin * cout * 9 * hw * hw / 1e9
        print(
            f"| conv 3x3 {cin}->{cout} | 250x{cin}x{hw}x{hw} | {a:.2f} | {b:.2f} | {a / b:.1f}x "
            f"| {d:.0e} | {gmac / (b / 1e3):.0f} |"
        )


@torch.inference_mode()
def sliced_vs_masked() -> None:
    """A rollout could cut the first conv after the mask instead of multiplying by it."""
    print(
        "\n| conv 3x3 (NHWC, batch 250) | kept inputs | masked ms | sliced ms | masked / sliced |"
    )
    print("|---|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for cin, cout, hw in [(32, 32, 28), (64, 64, 14), (128, 128, 7)]:
        x = torch.randn(250, cin, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(cout, cin, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
        idx = torch.nonzero(torch.rand(cin, generator=g) > 0.5).flatten()
        mask = torch.zeros(cin)
        mask[idx] = 1
        a, b = _ms(_masked_conv, x, w, mask), _ms(_sliced_conv, x, w, idx)
        print(
            f"| {cin}->{cout} at {hw}x{hw} | {len(idx)}/{cin} | {a:.2f} | {b:.2f} | {a / b:.2f}x |"
        )


def _masked_conv(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x * mask.view(1, -1, 1, 1), w, padding=1)


def _sliced_conv(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    nhwc = torch.channels_last
    return F.conv2d(
        x.index_select(1, idx).contiguous(memory_format=nhwc),
        w[:, idx].contiguous(memory_format=nhwc),
        padding=1,
    )


def train_steps() -> None:
    print("\n| model | SGD step NCHW ms | SGD step NHWC ms | NCHW / NHWC |")
    print("|---|---:|---:|---:|")
    for name in ("vgg-small", "resnet20"):
        torch.manual_seed(0)
        base = build_model(name, 1, 10, 28)
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
        out = []
        for channels_last in (False, True):
            model = set_layout(copy.deepcopy(base), channels_last).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            out.append(_ms(_sgd_step, model, opt, x, y, reps=20))
        print(f"| {name} | {out[0]:.1f} | {out[1]:.1f} | {out[0] / out[1]:.2f}x |")


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    layers()
    sliced_vs_masked()
    train_steps()
