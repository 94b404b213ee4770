"""``compare.md`` table and ``pareto.png`` of an ``rlprune compare`` report dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from rlprune.baselines import TOLERANCE

__all__ = ["compare_table", "pareto_plot"]


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


def pareto_plot(report: dict[str, Any], path: Path) -> None:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for method, per_target in report["results"].items():
        rows = sorted(per_target.values(), key=lambda r: r["macs_ratio"])
        ax.errorbar(
            [r["macs_ratio"] for r in rows],
            [r["test_acc_mean"] for r in rows],
            yerr=[r["test_acc_std"] for r in rows],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.axhline(report["baseline"]["test_acc"], color="grey", ls=":", label="baseline")
    ax.set_xlabel("MACs / baseline")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs MACs (error bars: std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
