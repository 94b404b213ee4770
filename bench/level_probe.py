"""Which per-round statistic of batch-1 latency holds still on a shared VM? (docs/LATENCY.md)

The full model and a uniform 0.5 cut (NHWC, 1 thread, CPU clock), ``--rounds`` alternating
rounds of ``runs`` calls (100 at batch 1, 20 above). For the median, the 10th percentile and the
minimum of each round: the full model's level, its spread over rounds ((max - min) / median),
its inter-quartile range over rounds, how far the second half of the rounds moved from the
first (drift), and the cut/full ratio with its inter-quartile range. With ``--short-long``,
instead: a calibration-like timing (3 warm-up, 10 calls extended to 50 ms) against a
measurement-like one (25 warm-up, 100 calls), alternating, to see whether short timings read a
model slower.

    OMP_NUM_THREADS=1 .venv/bin/python bench/level_probe.py --model resnet20 --steady-malloc
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from benchargs import base_model, parse, parser  # bench/, beside this script
from rlprune.machine import cpu_summary, malloc_mode
from rlprune.pruning.profile import uniform_cut
from rlprune.pruning.timing import RoundTimer, measure_runtime, time_calls

ESTIMATORS: dict[str, Callable[[list[float]], float]] = {
    "median": statistics.median,
    "p10": lambda t: statistics.quantiles(t, n=10)[0],
    "min": min,
}


def _iqr(v: list[float]) -> float:
    q = statistics.quantiles(v, n=4)
    return (q[2] - q[0]) / statistics.median(v)


def estimators(model: torch.nn.Module, cut: torch.nn.Module, x: torch.Tensor, rounds: int) -> None:
    runs = 100 if x.shape[0] == 1 else 20
    res: dict[str, dict[str, list[float]]] = {m: {k: [] for k in ESTIMATORS} for m in ("f", "c")}
    with torch.inference_mode():
        for _ in range(rounds):
            for m, net in (("f", model), ("c", cut)):
                ts = time_calls(lambda net=net: net(x), runs, 5, "cpu")  # type: ignore[misc]
                for k, f in ESTIMATORS.items():
                    res[m][k].append(f(ts))
    for k in ESTIMATORS:
        f, c = res["f"][k], res["c"][k]
        h = len(f) // 2
        drift = statistics.median(f[h:]) / statistics.median(f[:h]) - 1
        ratios = [a / b for a, b in zip(c, f, strict=True)]
        print(f"{k:6s}: full {statistics.median(f):.3f} ms, spread "
              f"{(max(f) - min(f)) / statistics.median(f):.0%}, IQR {_iqr(f):.1%}, second half "
              f"{drift:+.1%} | cut/full {statistics.median(ratios):.3f}, IQR {_iqr(ratios):.1%}")  # fmt: skip


def short_long(model: torch.nn.Module, cut: torch.nn.Module, ex: torch.Tensor, rounds: int) -> None:
    short, long_ = [], []
    for _ in range(rounds):
        t = RoundTimer({"full": model, "cut": cut}, ex, 1, 1, "torch", 10, "cpu")
        t.round()
        short.append(t.medians()["full"])
        long_.append(measure_runtime(model, ex, 1, 1, "torch", 100, "cpu"))
        measure_runtime(cut, ex, 1, 1, "torch", 100, "cpu")
    print(f"short: median {statistics.median(short):.3f} ms; long: {statistics.median(long_):.3f}"
          f" ms; paired short/long {statistics.median(a / b for a, b in zip(short, long_, strict=True)):.3f}")  # fmt: skip


def main() -> None:
    p = parser(__doc__, "resnet20")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--short-long", action="store_true")
    args = parse(p)
    torch.set_num_threads(1)
    model, ex = base_model(args.model)
    cut = uniform_cut(model, ex, 0.5)
    print(f"{args.model}, {cpu_summary()}, {malloc_mode()} malloc, batch {args.batch}, 1 thread, "
          f"CPU clock, {args.rounds} rounds")  # fmt: skip
    if args.short_long:
        short_long(model, cut, ex, args.rounds)
        return
    x = ex.expand(args.batch, *ex.shape[1:]).contiguous(memory_format=torch.channels_last)
    estimators(model, cut, x, args.rounds)


if __name__ == "__main__":
    main()
