"""The benchmark behind docs/RESULTS.md: RL against heuristics and peers at equal MACs.

    python bench/results.py train                      # baselines (committed once trained)
    python bench/results.py run [--model M] [--seed S] # fill cells; resumable, split as you like
    python bench/results.py collect                    # summary.json + tables from the cells

Each (model, target, seed, method) cell is one ``rlprune compare`` result, written as soon as
it is measured and copied to ``docs/results/cells/`` so that it can be committed and a later
session (or machine) goes on where this one stopped. Cells record the CPU they ran on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from rlprune.compare import CompareConfig, compare
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


def _sync(src: Path, dst: Path) -> None:
    """Copy every cell file under ``src`` that ``dst`` lacks or holds older."""
    for f in src.rglob("*.json"):
        target = dst / f.relative_to(src)
        if not target.exists() or target.read_bytes() != f.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)


def cmd_run(cfg: dict[str, Any], models: list[str], seeds: list[int]) -> None:
    for name in models:
        out = RUNS / name
        committed = DOCS / "cells" / name
        if committed.exists():
            _sync(committed, out / "cells")  # go on where the last session stopped
        for seed in seeds:
            prune = load_config(PruneConfig, None, [*cfg.get("set", []), f"seed={seed}"])
            for target in cfg["targets"]:  # one target at a time: its cells land in docs/ soon
                cc = CompareConfig(
                    checkpoint=baseline_path(name),
                    dataset=cfg["dataset"],
                    out=out,
                    targets=(float(target),),
                    seeds=1,
                    methods=tuple(cfg["methods"]),
                    prune=prune,
                    quiet=not sys.stderr.isatty(),
                )
                res = compare(cc)
                _sync(out / "cells", committed)
                done = f"{res.cells_run} cells run, {res.cells_reused} reused"
                print(f"{name} seed {seed} target {target:g}: {done}", flush=True)


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
                row.append(text)
            lines.append(f"| {method} | " + " | ".join(row) + " |")
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
        cpus = sorted(
            {r.get("cpu", "?") for rows in per_target.values() for rs in rows.values() for r in rs}
        )
        lines += ["", "CPUs: " + "; ".join(cpus), ""]
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> None:
    cfg = _config()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("step", choices=("train", "run", "collect", "all"))
    p.add_argument("--model", action="append", help="model(s) of results.yaml (default: all)")
    p.add_argument("--seed", action="append", type=int, help="seed(s) (default: all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    models = args.model or list(cfg["models"])
    seeds = args.seed or list(cfg["seeds"])
    if args.step in ("train", "all"):
        cmd_train(cfg, models)
    if args.step in ("run", "all"):
        cmd_run(cfg, models, seeds)
    if args.step in ("collect", "all"):
        cmd_collect(cfg)


if __name__ == "__main__":
    main()
