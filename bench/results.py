"""The benchmark behind docs/RESULTS.md: RL against heuristics and peers at equal MACs.

    python bench/results.py train                      # baselines (committed once trained)
    python bench/results.py run [--model M] [--seed S] # fill cells; resumable, split as you like
    python bench/results.py run --model M --seed S --target T --device cuda --runs DIR
                                                       # one piece (parallel processes: own DIR)
    python bench/results.py run --model M --seed S --method l1-uniform   # some methods only
    python bench/results.py collect                    # summary.json + tables from the cells

Each (model, target, seed, method) cell is one ``rlprune compare`` result, written as soon as
it is measured and copied to ``docs/results/cells/`` so that it can be committed and a later
session (or machine) goes on where this one stopped. Cells record the CPU and the device (cpu,
or e.g. ``cuda: NVIDIA H200``) they ran on; cells older than the device entry ran on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from rlprune.compare import REGISTRY, CompareConfig, compare
from rlprune.compare_report import cpu_summary
from rlprune.config import PruneConfig, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "bench" / "results.yaml"
DOCS = ROOT / "docs" / "results"
RUNS = ROOT / "runs" / "results"


def _config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def baseline_path(model: str) -> Path:
    return DOCS / "base" / f"{model}.pt"


def cmd_train(cfg: dict[str, Any], models: list[str]) -> None:
    from rlprune.checkpoint import save_checkpoint
    from rlprune.data import load_dataset
    from rlprune.models import ModelSpec
    from rlprune.train import evaluate, train

    for name in models:
        path = baseline_path(name)
        if path.exists():
            print(f"{name}: baseline {path.relative_to(ROOT)} exists")
            continue
        tc = TrainConfig(epochs=float(cfg["models"][name]["epochs"]), seed=0)
        data = load_dataset(cfg["dataset"], seed=0)
        spec = ModelSpec(name, data.in_channels, data.num_classes, data.input_size, 1.0)
        model = spec.build()
        train(model, data, tc, progress=sys.stderr.isatty())
        acc = evaluate(model.cpu(), data.test)
        meta = {"test_acc": acc, "epochs": tc.epochs, "dataset": data.name, "cpu": cpu_summary()}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, model, spec, meta=meta)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{name}: test acc {acc:.2f}% after {tc.epochs:g} epochs -> {path}")


def _sync(src: Path, dst: Path, pattern: str = "*.json") -> None:
    """Copy every cell file under ``src`` (matching ``pattern``) that ``dst`` lacks or holds
    otherwise; each copy lands whole (a temporary file renamed), so processes that share
    ``dst`` never read half a cell."""
    for f in src.rglob(pattern):
        target = dst / f.relative_to(src)
        if not target.exists() or target.read_bytes() != f.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copy2(f, tmp)
            os.replace(tmp, target)


def cmd_run(
    cfg: dict[str, Any],
    models: list[str],
    seeds: list[int],
    targets: list[float] | None = None,
    device: str = "cpu",
    runs: Path = RUNS,
    methods: list[str] | None = None,
) -> None:
    """Fill the cells of ``models`` x ``seeds`` x ``targets`` (default: results.yaml's), one
    ``compare`` per (seed, target), working in ``runs/<model>`` on ``device``. Each pair's cells
    are copied to docs/ as soon as it finishes (only its own: processes with their own ``runs``
    folder can fill one docs/ at once). ``methods``: a subset of results.yaml's; one built on
    the rl searches (random-search's candidate count) brings results.yaml's rl methods along
    (their finished cells are reused), so its cell is the one a full run makes."""
    methods = _with_rl_searches(methods, cfg["methods"]) if methods else list(cfg["methods"])
    for name in models:
        out = runs / name
        committed = DOCS / "cells" / name
        if committed.exists():
            _sync(committed, out / "cells")  # go on where the last session stopped
        for seed in seeds:
            prune = load_config(PruneConfig, None, [*cfg.get("set", []), f"seed={seed}"])
            for target in targets or cfg["targets"]:  # one at a time: its cells land in docs/ soon
                cc = CompareConfig(
                    checkpoint=baseline_path(name),
                    dataset=cfg["dataset"],
                    out=out,
                    targets=(float(target),),
                    seeds=1,
                    methods=tuple(methods),
                    prune=prune,
                    device=device,
                    quiet=not sys.stderr.isatty(),
                )
                res = compare(cc)
                _sync(out / "cells", committed, f"t{float(target):g}_s{seed}.json")
                done = f"{res.cells_run} cells run, {res.cells_reused} reused"
                print(f"{name} seed {seed} target {target:g}: {done}", flush=True)


def _with_rl_searches(asked: list[str], configured: list[str]) -> list[str]:
    """``asked`` plus the configured rl searches if an asked method reads their counts or
    rollouts (in the configured order)."""
    entries = [REGISTRY[m] for m in asked]
    if not any(e.uses_rl_counts or e.uses_rl_rollouts for e in entries):
        return list(asked)
    return [m for m in configured if m in asked or m.startswith("rl")]


def _cells(cfg: dict[str, Any]) -> dict[str, dict[str, dict[str, list[dict[str, Any]]]]]:
    """model -> target -> method -> rows (one per seed, sorted by seed)."""
    out: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for name in cfg["models"]:
        for target in cfg["targets"]:
            for method in cfg["methods"]:
                folder = DOCS / "cells" / name / method
                rows = []
                for seed in cfg["seeds"]:
                    f = folder / f"t{target:g}_s{seed}.json"
                    if f.exists():
                        rows.append(json.loads(f.read_text())["row"])
                if rows:
                    out.setdefault(name, {}).setdefault(f"{target:g}", {})[method] = rows
    return out


def _mean_se(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.2f} (n=1)"
    se = statistics.stdev(xs) / math.sqrt(len(xs))
    return f"{statistics.fmean(xs):.2f} ± {se:.2f} (n={len(xs)})"


def tables(cfg: dict[str, Any], cells: dict[str, Any]) -> str:
    """Markdown: per model, test accuracy (mean ± standard error over seeds) per method and
    target, the best mean in bold; then search and fine-tune seconds."""
    lines: list[str] = []
    targets = [f"{t:g}" for t in cfg["targets"]]
    for name, per_target in cells.items():
        base = (
            json.loads((DOCS / "base" / f"{name}.json").read_text())
            if (DOCS / "base" / f"{name}.json").exists()
            else {}
        )
        lines += [f"### {name}" + (f" (baseline {base['test_acc']:.2f}%)" if base else ""), ""]
        lines += ["| method | " + " | ".join(f"{t}× MACs" for t in targets) + " |"]
        lines += ["|---|" + "---:|" * len(targets)]
        best = {
            t: max(
                (
                    statistics.fmean(r["test_acc"] for r in rows)
                    for rows in per_target.get(t, {}).values()
                ),
                default=math.nan,
            )
            for t in targets
        }
        usual = {t: _usual_device(per_target.get(t, {})) for t in targets}
        marked: set[str] = set()  # targets with a method marked ‡
        for method in cfg["methods"]:
            row = []
            for t in targets:
                rows = per_target.get(t, {}).get(method)
                if not rows:
                    row.append("—")
                    continue
                text = _mean_se([r["test_acc"] for r in rows])
                if statistics.fmean(r["test_acc"] for r in rows) == best[t]:
                    text = f"**{text}**"
                if not all(r["macs_within_tolerance"] for r in rows):
                    text += " †"
                if any(r.get("device", "cpu") != usual[t] for r in rows):
                    text += " ‡"
                    marked.add(t)
                row.append(text)
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        if marked:
            lines += [
                "",
                "‡ some of its seeds ran on another device than most of its column's cells: "
                + "; ".join(f"{t}×: mostly {usual[t]}" for t in targets if t in marked),
            ]
        lines += [
            "",
            "Search / fine-tune wall seconds (mean over seeds; rl's search time includes "
            "its per-unit and final fine-tunes and measurements):",
            "",
        ]
        lines += ["| method | " + " | ".join(targets) + " |", "|---|" + "---:|" * len(targets)]
        for method in cfg["methods"]:
            row = []
            for t in targets:
                rows = per_target.get(t, {}).get(method)
                row.append(
                    "—"
                    if not rows
                    else f"{statistics.fmean(r['search_s'] for r in rows):.0f} / "
                    f"{statistics.fmean(r['finetune_s'] for r in rows):.0f}"
                )
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        rows = [r for per in per_target.values() for rs in per.values() for r in rs]
        cpus = sorted({r.get("cpu", "?") for r in rows})
        lines += ["", f"CPUs: {'; '.join(cpus)}. Devices: {'; '.join(_devices(rows))}", ""]
    return "\n".join(lines)


def _usual_device(per_method: dict[str, list[dict[str, Any]]]) -> str:
    """The device most of these cells ran on ('' if none; a tie: the first in name order)."""
    seen: dict[str, int] = {}
    for rows in per_method.values():
        for r in rows:
            seen[r.get("device", "cpu")] = seen.get(r.get("device", "cpu"), 0) + 1
    return max(sorted(seen), key=lambda d: seen[d], default="")


def _devices(rows: list[dict[str, Any]]) -> list[str]:
    """The devices ``rows`` ran on, each with its count of cells (a cell without the entry
    predates it and ran on the CPU)."""
    seen: dict[str, int] = {}
    for r in rows:
        seen[r.get("device", "cpu")] = seen.get(r.get("device", "cpu"), 0) + 1
    return [f"{d} ({n} cell{'s' * (n != 1)})" for d, n in sorted(seen.items())]


def cmd_collect(cfg: dict[str, Any]) -> None:
    cells = _cells(cfg)
    summary = {
        "results": {
            m: {
                t: {k: [r["test_acc"] for r in rows] for k, rows in per.items()}
                for t, per in pt.items()
            }
            for m, pt in cells.items()
        },
        "seeds": {
            m: {
                t: {k: [r["seed"] for r in rows] for k, rows in per.items()}
                for t, per in pt.items()
            }
            for m, pt in cells.items()
        },
        "machine": sorted(
            {
                r.get("cpu", "?")
                for pt in cells.values()
                for per in pt.values()
                for rows in per.values()
                for r in rows
            }
        ),
        "devices": {
            m: _devices([r for per in pt.values() for rows in per.values() for r in rows])
            for m, pt in cells.items()
        },
        "commands": [
            f"python bench/results.py run --model {m} --seed {s}"
            for m in cfg["models"]
            for s in cfg["seeds"]
        ],
    }
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = tables(cfg, cells)
    (DOCS / "tables.md").write_text(text + "\n")
    _splice(DOCS.parent / "RESULTS.md", text)
    print(text)


START, END = "<!-- tables:start (bench/results.py collect) -->", "<!-- tables:end -->"


def _splice(path: Path, text: str) -> None:
    """Replace the generated block of ``path`` (between the markers) with ``text``; the
    hand-written analysis around it stays."""
    if not path.exists():
        return
    doc = path.read_text()
    if START not in doc or END not in doc:
        return
    head, rest = doc.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def _floats(text: str) -> list[float]:
    """``"0.5,0.3"`` -> ``[0.5, 0.3]`` (an argparse type)."""
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    cfg = _config()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("step", choices=("train", "run", "collect", "all"))
    p.add_argument("--model", action="append", help="model(s) of results.yaml (default: all)")
    p.add_argument("--seed", action="append", type=int, help="seed(s) (default: all)")
    p.add_argument(
        "--target",
        action="append",
        type=_floats,
        help="MAC target(s) of results.yaml, e.g. 0.5 or 0.5,0.3 (default: all)",
    )
    p.add_argument(
        "--method",
        action="append",
        choices=cfg["methods"],
        help="method(s) of results.yaml (default: all); the others' cells are left as they are",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    p.add_argument("--runs", type=Path, default=RUNS, help=f"working folder (default: {RUNS})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    models = args.model or list(cfg["models"])
    seeds = args.seed or list(cfg["seeds"])
    targets = [t for ts in args.target or [] for t in ts]
    unknown = [t for t in targets if t not in [float(x) for x in cfg["targets"]]]
    if unknown:
        p.error(f"--target {unknown[0]:g} is not a target of {CONFIG.name}: {cfg['targets']}")
    if args.step in ("train", "all"):
        cmd_train(cfg, models)
    if args.step in ("run", "all"):
        cmd_run(cfg, models, seeds, targets or None, args.device, args.runs, args.method)
    if args.step in ("collect", "all"):
        cmd_collect(cfg)


if __name__ == "__main__":
    main()
