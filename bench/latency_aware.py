"""Latency-aware vs MACs-aware pruning at equal measured latency (docs/LATENCY.md).

For each model (checkpoints in docs/results/base/, Fashion-MNIST) and seed:

1. a latency table is profiled once per model on this machine (batch 1 and 64, ``--threads``
   threads, eager torch, NHWC) and kept in docs/results/latency/{model}_lut.json;
2. MACs-aware: the layer-wise RL search in budget mode at ``--target-macs``;
3. its pruned model's predicted batch-64 latency ratio to the baseline is the target of
4. latency-aware: the same search priced with the table, ``--target-latency`` at that ratio;
   while the two models' batch-64 latencies, timed in alternation, differ by more than 3%,
   another search at the target corrected by that miss (``--attempts`` in all);
5. the baseline and both pruned models are timed side by side; test accuracy and latency at
   batch 1 and 64 (predicted by the table and measured, ``--threads`` threads) go into
   docs/results/latency/{model}_s{seed}.json.

The fine-tune budget is the benchmark's (bench/results.yaml: finetune_steps=50,
final_finetune_epochs=0.5). Finished cells are kept (rerun to resume; run folders under
runs/latency_aware/ resume too). ``collect`` writes docs/LATENCY.md from the cells;
``rounding`` prints whether kept counts rounded to 8 or 16 run faster on this CPU.

    .venv/bin/python bench/latency_aware.py run --model vgg-small --seed 0 [--threads 1]
    .venv/bin/python bench/latency_aware.py collect
    .venv/bin/python bench/latency_aware.py rounding --model vgg-small [--threads 1]
    .venv/bin/python bench/latency_aware.py remeasure --model vgg-small --seed 0 [--threads 1]

``--strategy joint`` runs both arms with the joint search (cells in docs/results/latency_joint;
``--lut docs/results/latency/{model}_lut.json`` prices them with the walk's table), and
``match --strategy joint`` runs the joint latency-aware search at the walk cell's own latency
target and times it beside the walk's model (``{cells}/matched/``).

``--clock cpu`` (with ``--threads 1``) profiles a new table on the timing thread's CPU time;
every latency compared with a table's prediction, or with another model's, is measured on the
table's clock.
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

from benchargs import BASE, base_model, parse, parser  # bench/, beside this script
from latency_tables import BATCHES, latency_run, write_page  # bench/, beside this script
from rlprune.baselines import prune_to_target
from rlprune.checkpoint import load_model
from rlprune.config import PruneConfig, RewardConfig
from rlprune.data import load_dataset
from rlprune.machine import malloc_mode
from rlprune.models import set_layout
from rlprune.pruning import count_macs_params
from rlprune.pruning.clock import Clock
from rlprune.pruning.latency import LatencyLUT
from rlprune.pruning.profile import cpu_info, profile_latency
from rlprune.pruning.timing import measure_runtime
from rlprune.search import prune

ROOT = Path(__file__).resolve().parents[1]
CELLS = ROOT / "docs" / "results" / "latency"
RUNS = ROOT / "runs" / "latency_aware"
WALK_CELLS, WALK_RUNS = CELLS, RUNS  # the layer-wise cells, which ``match`` takes targets from
DATA = "/usr/share/datasets/fashion-mnist"
# bench/results.yaml's fine-tune budget; the strategy is --strategy's (default: the walk, as
# docs/LATENCY.md's first table was made)
SETTINGS = {"finetune_steps": 50, "final_finetune_epochs": 0.5}
TOLERANCE = 0.03  # equal measured latency: the latency-aware model within 3% of the MACs-aware


def _lut(model: nn.Module, example: torch.Tensor, name: str, threads: int, clock: Clock,
         given: str | None = None) -> Path:  # fmt: skip
    path = CELLS / f"{name}_lut.json"
    if not path.exists() and given:  # another benchmark's table: the same prices for both
        LatencyLUT.load(Path(given)).save(path)
    if not path.exists():
        t0 = time.perf_counter()
        profile_latency(model, example, BATCHES, threads, clock=clock).save(path)
        print(f"{name}: latency table profiled in {time.perf_counter() - t0:.0f} s -> {path}")
    have = LatencyLUT.load(path).clock
    if have != clock:
        raise SystemExit(f"{path} was timed on the {have} clock, not {clock}: pass --clock {have}")
    return path


def _measure(model: nn.Module, lut: LatencyLUT, counts: dict[str, int], example: torch.Tensor,
             threads: int, runs: int) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"macs": count_macs_params(model, example)[0]}
    for b in BATCHES:
        out[f"b{b}_measured_ms"] = measure_runtime(
            model, example, b, threads, "torch", runs, lut.clock
        )
        out[f"b{b}_predicted_ms"] = lut.model(b)(counts)
    return out


def _search(name: str, seed: int, kind: str, reward: RewardConfig, args: argparse.Namespace,
            round_to: int = 1) -> tuple[nn.Module, dict[str, int], float]:  # fmt: skip
    model, spec, _ = load_model(BASE / f"{name}.pt")
    data = load_dataset("fashion-mnist", data_dir=DATA, seed=0, max_train=args.max_train)
    cfg = PruneConfig(seed=seed, reward=reward, strategy=args.strategy, round_to=round_to,
                      **SETTINGS)  # type: ignore[arg-type]  # fmt: skip
    if args.smoke:
        cfg = PruneConfig(seed=seed, reward=reward, finetune_steps=2, final_finetune_epochs=0.01,
                          strategy=args.strategy, round_to=round_to)  # fmt: skip
    out = RUNS / name / f"{kind}_s{seed}"
    res = prune(model, data.train, data.val, cfg, test=data.test, out_dir=out, spec=spec,
                hflip=data.hflip, resume=(out / "rlprune-run.json").exists())  # fmt: skip
    counts = {r.unit: r.channels_after for r in res.units}
    assert res.pruned.test_acc is not None
    return res.model, counts, res.pruned.test_acc


def run(args: argparse.Namespace) -> None:
    CELLS.mkdir(parents=True, exist_ok=True)
    name, seed, t = args.model, args.seed, args.threads
    cell = CELLS / f"{name}_s{seed}.json"
    if cell.exists():
        print(f"{cell} exists: skipped")
        return
    base, example = base_model(name)
    lut_path = _lut(base, example, name, t, args.clock, args.lut)
    lut = LatencyLUT.load(lut_path)
    full = dict(lut.units)
    row: dict[str, Any] = {"model": name, "seed": seed, "threads": t, "clock": lut.clock,
                           "strategy": args.strategy,
                           "cpu": cpu_info(),
                           "torch": torch.__version__, "target_macs": args.target_macs,
                           "malloc": malloc_mode(), "round_to": args.round_to,
                           "max_attempts": args.attempts, "check_rounds": args.check_rounds,
                           "baseline": _measure(base, lut, full, example, t, args.runs)}  # fmt: skip
    macs_reward = RewardConfig(mode="budget", target_macs=args.target_macs)
    model, counts, acc = _search(name, seed, "macs", macs_reward, args)
    macs_model = model
    row["macs_aware"] = {"test_acc": acc, "kept": counts,
                         **_measure(model, lut, counts, example, t, args.runs)}  # fmt: skip
    # The target: the MACs-aware model's latency in the table's own terms (predicted / baseline
    # predicted), so a bias the table shares for both models cancels. While the latency-aware
    # model lands more than TOLERANCE off the MACs-aware one's batch-64 latency (the two timed
    # in alternation, ``--check-rounds`` rounds), another search at the target scaled by that
    # miss, up to ``--attempts`` searches; each run folder is named by its target, so a rerun
    # resumes exactly the searches it asks for again.
    ratio = row["macs_aware"]["b64_predicted_ms"] / row["baseline"]["b64_predicted_ms"]
    row["search_targets"], row["paired_checks"] = [], []
    for attempt in range(1, args.attempts + 1):
        row["target_latency"], row["attempts"] = ratio, attempt
        lat_reward = RewardConfig(mode="budget", efficiency="latency", target_latency=ratio,
                                  latency_table=str(lut_path), latency_batch=64)  # fmt: skip
        kind = "latency" if attempt == 1 else f"latency_t{ratio:.4f}"
        model, counts, acc = _search(name, seed, kind, lat_reward, args, args.round_to)
        row["latency_run"] = kind
        row["latency_aware"] = {"test_acc": acc, "kept": counts,
                                **_measure(model, lut, counts, example, t, args.runs)}  # fmt: skip
        miss = _paired_ratio(model, macs_model, example, t, args.runs, lut.clock,
                             args.check_rounds)  # fmt: skip
        row["latency_aware"]["paired_b64_ratio"] = miss
        row["search_targets"].append(ratio)
        row["paired_checks"].append(miss)
        if abs(miss - 1) <= TOLERANCE:
            break
        ratio = min(0.99, ratio / miss)
    _side_by_side(row, base, ("macs", kind), lut, example, args, args.final_rounds)
    cell.write_text(json.dumps(row, indent=1))
    print(json.dumps({k: row[k] for k in ("model", "seed", "target_latency")}), "->", cell)


def _paired_ratio(a: nn.Module, b: nn.Module, example: torch.Tensor, threads: int, runs: int,
                  clock: Clock, rounds: int = 4) -> float:  # fmt: skip
    """Batch-64 latency of ``a`` over ``b``, timed in alternation (median of the rounds'
    ratios): two models timed minutes apart differ by the machine's drift, not only theirs."""
    ratios = []
    for _ in range(rounds):
        ta = measure_runtime(a, example, 64, threads, "torch", runs, clock)
        ratios.append(ta / measure_runtime(b, example, 64, threads, "torch", runs, clock))
    return statistics.median(ratios)


def _interleaved(nets: dict[Any, nn.Module], example: torch.Tensor, threads: int, runs: int,
                 clock: Clock, rounds: int = 6) -> dict[tuple[Any, int], float]:  # fmt: skip
    """``(key, batch) -> ms``: the median over ``rounds`` interleaved rounds (every model and
    batch once per round, NHWC) of each round's median of ``runs`` passes. This VM's speed
    drifts over minutes, so only models timed together compare."""
    times: dict[tuple[Any, int], list[float]] = {}
    for _ in range(rounds):
        for key, net in nets.items():
            set_layout(net, True).eval()
            for b in BATCHES:
                ms = measure_runtime(net, example, b, threads, "torch", runs, clock)
                times.setdefault((key, b), []).append(ms)
    return {k: statistics.median(v) for k, v in times.items()}


def _side_by_side(row: dict[str, Any], base: nn.Module, kinds: tuple[str, str], lut: LatencyLUT,
                  example: torch.Tensor, args: argparse.Namespace, rounds: int = 6) -> None:  # fmt: skip
    """Time the baseline and both pruned models again, interleaved (``rounds`` rounds of
    ``args.runs`` passes, the median of the rounds' medians), and add that timing to the cell's
    ``timings``. This VM's speed drifts over minutes, and two models' ratio with it (one pair
    measured 0.99-1.08 in fifteen blocks of 6-8 rounds within 8 minutes), so only models timed
    together compare, and each model's latency is the median over timings taken at different
    times (``remeasure`` adds one). The timings taken right after each search (which steered
    the corrected reruns) are kept under ``search_measured``."""
    models = {"baseline": base}
    for key, kind in zip(("macs_aware", "latency_aware"), kinds, strict=True):
        models[key] = load_model(RUNS / row["model"] / f"{kind}_s{row['seed']}" / "model.pt")[0]
    if "timings" not in row and "measured" in row:  # a cell made before timings were kept
        row["timings"] = [{k: {str(b): row[k][f"b{b}_measured_ms"] for b in BATCHES}
                           for k in models}]  # fmt: skip
    times = _interleaved(models, example, args.threads, args.runs, lut.clock, rounds)
    blocks = row.setdefault("timings", [])
    blocks.append({k: {str(b): times[k, b] for b in BATCHES} for k in models})
    for key in models:
        m = row[key]
        m.setdefault("search_measured", {b: m.get(f"b{b}_measured_ms") for b in BATCHES})
        for b in BATCHES:
            m[f"b{b}_measured_ms"] = statistics.median(t[key][str(b)] for t in blocks)
    row["measured"] = (f"side by side, the median of {len(blocks)} timing(s) at different "
                       f"times, each the median of {rounds} rounds x {args.runs} passes")  # fmt: skip


def remeasure(args: argparse.Namespace) -> None:
    """Time a finished cell's three models again, side by side: one more of its timings."""
    cell = CELLS / f"{args.model}_s{args.seed}.json"
    row = json.loads(cell.read_text())
    base, example = base_model(args.model)
    lut = LatencyLUT.load(CELLS / f"{args.model}_lut.json")
    _side_by_side(row, base, ("macs", latency_run(row)), lut, example, args, args.final_rounds)
    cell.write_text(json.dumps(row, indent=1))
    print(f"{cell}: timed again side by side ({len(row['timings'])} timings)")


def match(args: argparse.Namespace) -> None:
    """This strategy's latency-aware search at the layer-wise cell's latency target (each
    strategy's own MACs-aware model sets its target in ``run``, so two strategies' cells differ
    in target); measured side by side with the walk's latency-aware model. Writes
    ``{cells}/matched/{model}_s{seed}.json``."""
    name, seed, t = args.model, args.seed, args.threads
    out = CELLS / "matched" / f"{name}_s{seed}.json"
    if out.exists():
        print(f"{out} exists: skipped")
        return
    walk = json.loads((WALK_CELLS / f"{name}_s{seed}.json").read_text())
    kind = latency_run(walk)
    base, example = base_model(name)
    # the walk's target is a ratio in the walk's table: price with that table unless told
    given = args.lut or str(WALK_CELLS / f"{name}_lut.json")
    lut_path = _lut(base, example, name, t, args.clock, given)
    lut = LatencyLUT.load(lut_path)
    reward = RewardConfig(mode="budget", efficiency="latency", target_latency=walk["target_latency"],
                          latency_table=str(lut_path), latency_batch=64)  # fmt: skip
    model, counts, acc = _search(name, seed, "matched", reward, args)
    walk_model = load_model(WALK_RUNS / name / f"{kind}_s{seed}" / "model.pt")[0]
    nets = {"baseline": base, "walk": walk_model, args.strategy: model}
    times = _interleaved(nets, example, t, args.runs, lut.clock)
    full = dict(lut.units)
    kept = {"baseline": full, "walk": walk["latency_aware"]["kept"], args.strategy: counts}
    accs = {"walk": walk["latency_aware"]["test_acc"], args.strategy: acc}
    row = {"model": name, "seed": seed, "target_latency": walk["target_latency"],
           "clock": lut.clock, "threads": t, "cpu": cpu_info(), "torch": torch.__version__}  # fmt: skip
    for key, net in nets.items():
        row[key] = {"test_acc": accs.get(key), "kept": kept[key],
                    "macs": count_macs_params(net, example)[0]}  # fmt: skip
        for b in BATCHES:
            row[key][f"b{b}_predicted_ms"] = lut.model(b)(kept[key])
            row[key][f"b{b}_measured_ms"] = times[key, b]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))
    print(f"{name} s{seed}: {args.strategy} {acc:.2f}% against the walk's {accs['walk']:.2f}% "
          f"at latency target {walk['target_latency']:.3f} -> {out}")  # fmt: skip


def collect(args: argparse.Namespace) -> None:
    print(write_page(CELLS, ROOT))


def rounding(args: argparse.Namespace) -> None:
    """Measured latency of the MACs-aware cell's kept counts, raw and rounded (L1 surgery)."""
    name, t = args.model, args.threads
    cells = sorted(CELLS.glob(f"{name}_s*.json"))
    base, example = base_model(name)
    if cells:
        counts = json.loads(cells[0].read_text())["macs_aware"]["kept"]
    else:  # no cell yet: 45% of every unit
        counts = {
            n: max(1, round(0.45 * c))
            for n, c in LatencyLUT.load(_lut(base, example, name, t, args.clock)).units.items()
        }
    print(
        f"{name}, {cpu_info()}, {t} thread(s), kept counts of {cells[0].name if cells else '45% per unit'}"
    )
    models = {}
    for m in (1, 8, 16):
        models[m] = copy.deepcopy(base)
        prune_to_target(models[m], "l1-rl-ratios", 1.0, example, counts=counts, round_to=m)
    times = _interleaved(models, example, t, args.runs, args.clock)
    print("| round_to | MACs | b1 ms | b64 ms | b64 ms per MMAC |\n|---:|---:|---:|---:|---:|")
    for m, model in models.items():
        macs = count_macs_params(model, example)[0] / 1e6
        lat = [times[m, b] for b in BATCHES]
        print(f"| {m} | {macs:.2f}M | {lat[0]:.3f} | {lat[1]:.3f} | {lat[1] / macs:.3f} |")


def main() -> None:
    global CELLS, RUNS
    p = parser(__doc__)
    p.add_argument("action", choices=["run", "collect", "rounding", "remeasure", "match"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="threads of every timing")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="clock of a new table and of the timings (cpu: --threads 1)")  # fmt: skip
    p.add_argument("--target-macs", type=float, default=0.5)
    p.add_argument("--runs", type=int, default=30, help="timed passes per measurement")
    p.add_argument("--attempts", type=int, default=3,
                   help="latency-aware searches at most, each aimed by the last one's miss")  # fmt: skip
    p.add_argument("--check-rounds", type=int, default=8,
                   help="alternating batch-64 rounds of the check after each search")  # fmt: skip
    p.add_argument("--final-rounds", type=int, default=10,
                   help="interleaved rounds of the final side-by-side timing")  # fmt: skip
    p.add_argument("--max-train", type=int, default=None, help="smoke runs: fewer images")
    p.add_argument("--smoke", action="store_true", help="tiny fine-tune budget (a check only)")
    p.add_argument(
        "--strategy",
        default="layerwise",
        choices=["layerwise", "joint"],
        help="the search of both arms (joint: cells in docs/results/latency_joint)",
    )
    p.add_argument(
        "--lut",
        default=None,
        help="use this latency table instead of profiling one (copied to the cells)",
    )
    p.add_argument("--cells", default=None, help="cell folder (smoke runs: elsewhere)")
    p.add_argument("--round-to", type=int, default=1,
                   help="the latency-aware arm keeps multiples of this (joint: cells in "
                   "docs/results/latency_round{N})")  # fmt: skip
    args = parse(p)
    if args.cells is None and args.strategy == "joint" and args.round_to > 1:
        CELLS = ROOT / f"docs/results/latency_round{args.round_to}"
        RUNS = ROOT / f"runs/latency_round{args.round_to}"
    elif args.cells is None and args.strategy == "joint":
        CELLS, RUNS = ROOT / "docs/results/latency_joint", ROOT / "runs/latency_aware_joint"
    elif args.cells is not None and Path(args.cells) != CELLS:
        CELLS, RUNS = Path(args.cells), Path(args.cells) / "runs"
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine is busy; latencies will be noisy")
    actions = {"run": run, "collect": collect, "rounding": rounding, "remeasure": remeasure,
               "match": match}  # fmt: skip
    actions[args.action](args)


if __name__ == "__main__":
    main()
