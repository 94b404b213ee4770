"""Does a latency table made on the CPU clock predict pruned models within 10%? (docs/LATENCY.md)

On a shared VM, wall-clock latency swings by 10-40% between measurements, so a table's
prediction error cannot be told from the machine's drift. The CPU time of the one timing thread
(``clock=cpu``, 1 thread) leaves out the time the core was given to someone else. This script,
for one model (checkpoint in docs/results/base/, Fashion-MNIST input, NHWC, 1 thread):

1. profiles a latency table at batch 1 and 64 on the CPU clock, with in-model extras
   (``layers="in-model"``); the same table refitted with its layers alone
   (``LatencyTable.alone``) gives the second prediction, so both meet the same measurements;
2. prunes copies to several structures: l1-uniform at 0.7/0.5/0.3 of the MACs (every unit cut
   alike) and global-magnitude masks at 0.5/0.3/0.15 (uneven cuts, unlike the uniform cuts the
   table's calibration saw);
3. measures the baseline and every pruned model in ``--rounds`` interleaved rounds, each a
   median of ``--runs`` passes on the CPU clock and then on the wall clock;
4. prints predicted vs measured (median of the rounds), both predictions' errors, the spread
   between rounds ((max - min) / median of the round medians) for both clocks, and how many
   structures each prediction got within 10%.

    OMP_NUM_THREADS=1 .venv/bin/python bench/latency_clock.py --model vgg-small [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchargs import base_model, parse, parser  # bench/, beside this script
from latency_tables import latency_run
from rlprune.baselines import prune_to_target
from rlprune.machine import malloc_mode
from rlprune.models import set_layout
from rlprune.pruning import count_macs_params, profile, timing
from rlprune.pruning.clock import Clock
from rlprune.pruning.latency import LatencyModel, uniform_counts
from rlprune.pruning.profile import cpu_info, profile_latency
from rlprune.pruning.timing import measure_runtime

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (64, 1)
STRUCTURES = (
    ("baseline", 1.0),
    ("l1-uniform", 0.7),
    ("l1-uniform", 0.5),
    ("l1-uniform", 0.3),
    ("global-magnitude", 0.5),
    ("global-magnitude", 0.3),
    ("global-magnitude", 0.15),
)
CLOCKS: tuple[Clock, ...] = ("cpu", "wall")


def _structures(base: nn.Module, example: torch.Tensor) -> dict[str, tuple[nn.Module, dict[str, int]]]:  # fmt: skip
    """``label -> (pruned NHWC copy, kept channels per unit)``."""
    out = {}
    for method, target in STRUCTURES:
        model = copy.deepcopy(base)
        counts = prune_to_target(model, method, target, example) if target < 1 else {}
        out[f"{method} {target:g}"] = (set_layout(model, True).eval(), counts)
    return out


def _searched_counts(name: str) -> dict[str, dict[str, int]]:
    """``label -> kept channels per unit`` for every distinct structure the cells of
    bench/latency_aware.py record (docs/results/latency, latency_joint, latency_round{8,16}):
    both arms of every seed, the layer-wise walk's, the joint search's and the rounded joint
    search's."""
    out: dict[str, dict[str, int]] = {}
    seen: set[tuple[int, ...]] = set()
    for tag, cells in (("walk", "latency"), ("joint", "latency_joint"),
                       ("round8", "latency_round8"), ("round16", "latency_round16")):  # fmt: skip
        for cell in sorted((ROOT / "docs" / "results" / cells).glob(f"{name}_s*.json")):
            row = json.loads(cell.read_text())
            for arm, kind in (("macs_aware", "macs"), ("latency_aware", latency_run(row))):
                counts = {u: int(k) for u, k in row[arm]["kept"].items()}
                key = tuple(counts[u] for u in sorted(counts))
                if key not in seen:
                    seen.add(key)
                    out[f"{tag} {kind} s{row['seed']}"] = counts
    return out


def _cut_to(base: nn.Module, example: torch.Tensor, counts: dict[str, int]) -> nn.Module:
    """An NHWC copy of ``base`` with each unit cut to ``counts`` (its L1-largest filters)."""
    model = copy.deepcopy(base)
    prune_to_target(model, "l1-rl-ratios", 1.0, example, counts=counts)
    return set_layout(model, True).eval()


def _searched(name: str, base: nn.Module, example: torch.Tensor
              ) -> dict[str, tuple[nn.Module, dict[str, int]]]:  # fmt: skip
    """The structures bench/latency_aware.py's searches pruned to, and the baseline. Latency
    depends on the widths alone, not on which filters stay, so each is rebuilt from its
    recorded counts (L1 filters): no run folder needs to travel to the machine that times them."""
    out = {"baseline": (base, {})}
    for label, counts in _searched_counts(name).items():
        out[label] = (_cut_to(base, example, counts), counts)
    return out


def _sweep(base: nn.Module, example: torch.Tensor, full: dict[str, int]
           ) -> dict[str, tuple[nn.Module, dict[str, int]]]:  # fmt: skip
    """Every unit kept at ``k/16`` of its width, k = 4..16 (L1 filters): on resnet20 widths
    k/2k/4k, so aligned (multiples of 8 or 16) and unaligned widths alternate."""
    out = {}
    for k in range(16, 3, -1):
        counts = uniform_counts(full, k / 16)
        out[f"uniform {k}/16"] = (_cut_to(base, example, counts), counts)
    return out


def _spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.median(xs)


def fastest_per_timing() -> None:
    """An experiment, not an option of the package: every timing of the grid, the calibration
    rounds and the measurements reads the fastest of its calls instead of their median
    (in-model extras keep their medians; ``error_alone`` is the all-minimum prediction)."""
    real = timing.timed_at_least

    def fastest(*a: Any, **kw: Any) -> list[float]:
        return [min(real(*a, **kw))]

    timing.timed_at_least = fastest  # type: ignore[assignment]  # RoundTimer's rounds
    profile.timed_at_least = fastest  # type: ignore[assignment]  # the grid's probes


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    if args.statistic == "min":
        fastest_per_timing()
    base, example = base_model(args.model)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    lut = profile_latency(
        base, example, BATCHES, threads=1, runs=args.profile_runs, step=args.step, clock="cpu",
        layers="in-model",
    )  # fmt: skip
    profile_s = time.perf_counter() - t0
    if args.lut_out:
        lut.save(args.lut_out)  # a table from this machine, to price searches made elsewhere
    print(f"{args.model}: table profiled on the cpu clock in {profile_s:.0f} s")
    if args.searched:
        nets = _searched(args.model, base, example)
    elif args.sweep:
        nets = _sweep(base, example, dict(lut.units))
    else:
        nets = _structures(base, example)
    base_macs = count_macs_params(base, example)[0]
    times: dict[tuple[str, int, str], list[float]] = {}
    t0 = time.perf_counter()
    for _ in range(args.rounds):  # interleaved: every model and clock once per round
        for label, (net, _) in nets.items():
            for b in BATCHES:
                for clock in CLOCKS:
                    runs = args.runs if b > 1 else 5 * args.runs
                    ms = measure_runtime(net, example, b, 1, "torch", runs, clock)
                    times.setdefault((label, b, clock), []).append(ms)
    measure_s = time.perf_counter() - t0
    rows = []
    for label, (net, counts) in nets.items():
        macs = count_macs_params(net, example)[0] / base_macs
        for b in BATCHES:
            predicted = lut.model(b)(counts)
            alone = LatencyModel(lut.tables[b].alone(lut.units), lut.units)(counts)
            cpu, wall = times[label, b, "cpu"], times[label, b, "wall"]
            rows.append({"structure": label, "macs": macs, "batch": b, "predicted_ms": predicted,
                         "cpu_rounds_ms": cpu, "wall_rounds_ms": wall,
                         "cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall),
                         "error": predicted / statistics.median(cpu) - 1,
                         "predicted_alone_ms": alone,
                         "error_alone": alone / statistics.median(cpu) - 1})  # fmt: skip
    return {
        "model": args.model, "cpu": cpu_info(), "torch": torch.__version__, "threads": 1,
        "malloc": malloc_mode(),
        "rounds": args.rounds, "runs_b64": args.runs, "runs_b1": 5 * args.runs,
        "statistic": args.statistic,
        "profile_runs": args.profile_runs, "step": args.step, "profile_s": profile_s,
        "measure_s": measure_s,
        "loadavg_start": load0, "loadavg_end": os.getloadavg(),
        "calibration": {b: t.calibration for b, t in lut.tables.items()}, "rows": rows,
    }  # fmt: skip


def show(res: dict[str, Any]) -> None:
    print(f"\n{res['model']}, {res['cpu']}, torch {res['torch']}, {res['threads']} thread, "
          f"{res.get('malloc', 'system')} malloc, {res.get('statistic', 'median')} per timing; "
          f"{res['rounds']} rounds x {res['runs_b64']} (b64) / {res['runs_b1']} (b1) passes; "
          f"profile {res['profile_s']:.0f} s, measurements {res['measure_s']:.0f} s; "
          f"load average {res['loadavg_start'][0]:.2f} -> {res['loadavg_end'][0]:.2f}")  # fmt: skip
    for b, cal in res["calibration"].items():
        fit = ", ".join(f"{f:g}: {m:.3f}/{p:.3f}" for f, m, p in cal)
        print(f"b{b} calibration (keep fraction: measured/fitted cpu ms): {fit}")
    print("| structure | MACs | batch | predicted ms (cpu) | measured cpu ms (round spread) "
          "| error | error, layers alone | measured wall ms (round spread) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for r in res["rows"]:
        alone = f"{r['error_alone']:+.1%}" if "error_alone" in r else "-"
        print(f"| {r['structure']} | {r['macs']:.3f} | {r['batch']} | {r['predicted_ms']:.3f} | "
              f"{r['cpu_ms']:.3f} ({_spread(r['cpu_rounds_ms']):.1%}) | {r['error']:+.1%} | "
              f"{alone} | {r['wall_ms']:.3f} ({_spread(r['wall_rounds_ms']):.1%}) |")  # fmt: skip
    for b in BATCHES:
        rows = [r for r in res["rows"] if r["batch"] == b]
        hits = sum(abs(r["error"]) <= 0.1 for r in rows)
        alone = sum(abs(r.get("error_alone", 1.0)) <= 0.1 for r in rows)
        print(f"b{b}: within 10%: {hits}/{len(rows)} in-model, {alone}/{len(rows)} layers alone")
        base = next((r for r in rows if r["structure"] == "baseline"), None)
        if base is not None:  # the ratio a --target-latency budget constrains
            errs = [(r["predicted_ms"] / base["predicted_ms"]) / (r["cpu_ms"] / base["cpu_ms"]) - 1
                    for r in rows if r is not base]  # fmt: skip
            print(f"b{b}: over the baseline, within 10%: {sum(abs(e) <= 0.1 for e in errs)}/"
                  f"{len(errs)} ({min(errs, default=0):+.1%} to {max(errs, default=0):+.1%})")  # fmt: skip


def main() -> None:
    p = parser(__doc__, "vgg-small")
    p.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    p.add_argument("--runs", type=int, default=20, help="timed passes per b64 measurement (b1: 5x)")
    p.add_argument("--profile-runs", type=int, default=10, help="timed calls per probe")
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="output widths probed at multiples of this and one either side (1: all; "
        "default: profile_latency's, every width at batch 1 and multiples of 8 above)",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--lut-out", default=None, help="also save the profiled table here")
    p.add_argument("--sweep", action="store_true",
                   help="structures: every unit at k/16 of its width, k = 4..16")  # fmt: skip
    p.add_argument("--searched", action="store_true",
                   help="structures: those bench/latency_aware.py's searches pruned to, rebuilt "
                   "from the kept counts in its cells under docs/results/")  # fmt: skip
    p.add_argument("--statistic", choices=("median", "min"), default="median",
                   help="min: each timing reads its fastest call (an experiment, see "
                   "fastest_per_timing)")  # fmt: skip
    p.add_argument("--show", default=None, metavar="JSON", help="only print a saved --json")
    args = parse(p)
    if args.show:
        show(json.loads(Path(args.show).read_text()))
        return
    res = run(args)
    show(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
