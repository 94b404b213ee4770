"""``rlprune compare``'s report: per-seed summaries, the reproducing command, the machine,
the ``compare.md`` table and ``pareto.png`` (matplotlib is imported only to plot)."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch_pruning as tp
import yaml

from rlprune.baselines import TOLERANCE
from rlprune.config import PruneConfig, config_to_dict
from rlprune.machine import cpu_summary

if TYPE_CHECKING:
    from rlprune.compare import CompareConfig

__all__ = ["command_line", "compare_table", "machine_info", "pareto_plot", "summarize"]


def summarize(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Mean/std over the per-seed result rows of one method at one target."""

    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in rows)

    accs = [float(r["test_acc"]) for r in rows]
    return {
        "target": target,
        "test_acc_mean": statistics.fmean(accs),
        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "val_acc_mean": mean("val_acc"),
        "macs": mean("macs"),
        "macs_ratio": mean("macs_ratio"),
        "params": mean("params"),
        "latency_b64_ms": mean("latency_b64_ms"),
        "search_s": mean("search_s"),
        "macs_within_tolerance": all(r["macs_within_tolerance"] for r in rows),
        "seeds": rows,
    }


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_summary(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_pruning": getattr(tp, "__version__", "?"),
        "threads": torch.get_num_threads(),
    }


def _config_sets(cfg: Any, default: Any, prefix: str = "") -> Iterator[str]:
    """``key=value`` for every field of ``cfg`` that differs from ``default`` (dotted keys)."""
    for key, value in config_to_dict(cfg).items():
        base = config_to_dict(default)[key]
        if isinstance(value, dict):
            yield from _config_sets(getattr(cfg, key), getattr(default, key), f"{prefix}{key}.")
        elif value != base:
            text = yaml.safe_dump(value, default_flow_style=True).splitlines()[0]
            yield f"{prefix}{key}={text}"


def command_line(cfg: CompareConfig, default_methods: Sequence[str]) -> str:
    """The ``rlprune compare`` command line that reproduces ``cfg`` (``--methods`` unless they
    are ``default_methods``; the search config as ``--set`` items for each value that differs
    from the default)."""
    cmd = ["rlprune", "compare", "--checkpoint", str(cfg.checkpoint), "--dataset", cfg.dataset]
    if cfg.data_dir is not None:
        cmd += ["--data-dir", str(cfg.data_dir)]
    if cfg.download:
        cmd.append("--download")
    if cfg.max_train is not None:
        cmd += ["--max-train", str(cfg.max_train)]
    if cfg.data_max_mb is not None:
        cmd += ["--data-max-mb", f"{cfg.data_max_mb:g}"]
    targets = ",".join(f"{t:g}" for t in cfg.targets)
    cmd += ["--out", str(cfg.out), "--targets", targets, "--seeds", str(cfg.seeds)]
    if list(cfg.methods) != list(default_methods):
        cmd += ["--methods", ",".join(cfg.methods)]
    for item in _config_sets(cfg.prune, PruneConfig()):
        cmd += ["--set", item]
    cmd += ["--device", cfg.device]
    return shlex.join(cmd)


def compare_table(report: dict[str, Any]) -> str:
    base = report["baseline"]
    lines = [
        "# RL vs heuristic filter pruning at equal MACs and equal fine-tuning",
        "",
        f"Baseline: test acc {base['test_acc']:.2f}%, MACs {base['macs'] / 1e6:.3f}M, "
        f"params {base['params'] / 1e3:.1f}k, latency b64 {base['latency_b64_ms']:.2f} ms. "
        f"Every method: the same checkpoint and {report['finetune_steps']} fine-tune SGD steps "
        f"(lr {report['config']['finetune_lr']}, batch {report['config']['batch_size']}); "
        f"{report['n_seeds']} seed(s).",
        "",
        "| method | target | test acc (mean ± std) | MACs ratio | params | latency b64 | search s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, per_target in report["results"].items():
        for key, r in per_target.items():
            flag = "" if r["macs_within_tolerance"] else " †"
            star = "¹" if method == "rl" else ""
            lines.append(
                f"| {method} | {key} | {r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f}% | "
                f"{r['macs_ratio']:.3f}{flag} | {r['params'] / 1e3:.1f}k | "
                f"{r['latency_b64_ms']:.2f} ms | {r['search_s']:.1f}{star} |"
            )
    m = report["machine"]
    lines += [
        "",
        "¹ rl: wall time of the whole `prune()` call (agent search, per-unit and final "
        "fine-tuning, measurement, export). Heuristics: scoring, selection and surgery only "
        "(`prune_to_target`); their fine-tuning is excluded (`finetune_s` in compare.json).",
        f"† MACs more than {TOLERANCE:.0%} off the target (rl and the methods that reuse its "
        "per-unit counts are not forced onto the target).",
        "Std is the sample standard deviation over seeds (0 with one seed); MACs, params and "
        "latency are means over seeds; latency is the median of the timed batch-64 passes.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs, "
        f"torch {m['torch']}, torch-pruning {m['torch_pruning']}, {m['threads']} threads.",
    ]
    return "\n".join(lines) + "\n"


def pareto_plot(report: dict[str, Any], path: Path, x: Literal["macs", "latency"] = "macs") -> None:
    """Test accuracy against MACs (``x="macs"``) or measured batch-64 latency
    (``x="latency"``), both as a fraction of the baseline's, one line per method."""
    from matplotlib.figure import Figure  # here, so that ``import rlprune`` stays light

    base_ms = report["baseline"]["latency_b64_ms"]

    def pos(r: dict[str, Any]) -> float:
        return float(r["macs_ratio"]) if x == "macs" else float(r["latency_b64_ms"]) / base_ms

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for method, per_target in report["results"].items():
        rows = sorted(per_target.values(), key=pos)
        ax.errorbar(
            [pos(r) for r in rows],
            [r["test_acc_mean"] for r in rows],
            yerr=[r["test_acc_std"] for r in rows],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.axhline(report["baseline"]["test_acc"], color="grey", ls=":", label="baseline")
    what = "MACs" if x == "macs" else "latency (batch 64, measured)"
    ax.set_xlabel(f"{what} / baseline")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs {what.split(' ')[0]} (error bars: std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
