"""Per layer type: time inside the whole forward against time alone (docs/LATENCY.md, "Layers
timed in the model"). For one model (checkpoint in docs/results/base/, NHWC, 1 thread, batch
64, CPU clock) cut uniformly to keep fractions 1, 0.75, 0.5 and 0.25: every layer call's median
inside 20 forwards (``rlprune.pruning.calls.in_model_ms``) and the same layer rebuilt at the
same widths, timed alone on a random input of its shape (20 calls), summed by layer type,
beside the whole forward's median.

    OMP_NUM_THREADS=1 .venv/bin/python bench/inmodel_layers.py --model resnet20 [--steady-malloc]
"""

from __future__ import annotations

import copy
import functools
import statistics
from collections import defaultdict

import torch

from benchargs import base_model, parse, parser  # bench/, beside this script
from rlprune.machine import cpu_summary, malloc_mode
from rlprune.models import set_layout
from rlprune.pruning.calls import in_model_ms, layer_calls
from rlprune.pruning.profile import _layer, uniform_cut
from rlprune.pruning.timing import measure_runtime, time_calls


@torch.inference_mode()
def _alone(mod: torch.nn.Module, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> float:
    layer = _layer(mod, shape_in[1], shape_out[1])
    assert layer is not None
    x = torch.randn(64, *shape_in[1:])
    if x.dim() == 4:
        x, layer = x.contiguous(memory_format=torch.channels_last), set_layout(layer, True)
    return statistics.median(time_calls(functools.partial(layer.eval(), x), 20, 5, "cpu"))


def main() -> None:
    p = parser(__doc__, "resnet20")
    args = parse(p)
    torch.set_num_threads(1)
    base, ex = base_model(args.model)
    print(f"{args.model}, {cpu_summary()}, {malloc_mode()} malloc, batch 64, 1 thread, cpu clock; "
          "ms in the model / alone")  # fmt: skip
    for frac in (1.0, 0.75, 0.5, 0.25):
        net = set_layout(uniform_cut(base, ex, frac) if frac < 1 else copy.deepcopy(base), True)
        inside = in_model_ms(net.eval(), ex, 64, 1, 20, "cpu")
        mods = dict(net.named_modules())
        by_type: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for call in layer_calls(net, ex):
            mod = mods[call.module]
            kind = type(mod).__name__
            by_type[kind][0] += inside[call.label]
            by_type[kind][1] += _alone(mod, call.shape_in, call.shape_out)
        whole = measure_runtime(net, ex, 64, 1, "torch", 20, "cpu")
        total = [sum(v[i] for v in by_type.values()) for i in (0, 1)]
        print(f"keep {frac:g}: whole {whole:.1f}, layers {total[0]:.1f} / {total[1]:.1f}; " +
              ", ".join(f"{k} {v[0]:.1f} / {v[1]:.1f}" for k, v in by_type.items() if v[0] > 0.05))  # fmt: skip


if __name__ == "__main__":
    main()
