"""``report.md`` and PNG plots from a run folder's ``report.json`` (``rlprune report RUN``)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlprune.checkpoint import atomic_write
from rlprune.errors import RlpruneError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["before_after_table", "write_report"]


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "—"
    if kind == "pct":
        return f"{v:.2f}%"
    if kind == "M":
        return f"{v / 1e6:.2f}M"
    if kind == "k":
        return f"{v / 1e3:.1f}k"
    if kind == "ms":
        return f"{v:.2f} ms"
    if kind == "KiB":
        return f"{v / 1024:.0f} KiB"
    return str(v)


ROWS = [
    ("test accuracy", "test_acc", "pct"),
    ("val accuracy", "val_acc", "pct"),
    ("MACs", "macs", "M"),
    ("params", "params", "k"),
    ("latency batch 1 (wall clock)", "latency_b1_ms", "ms"),
    ("latency batch 64 (wall clock)", "latency_b64_ms", "ms"),
    ("file size", "file_bytes", "KiB"),
]


def before_after_table(base: dict[str, Any], pruned: dict[str, Any]) -> str:
    """Markdown table of baseline vs pruned measurements with ratios."""
    lines = ["| | baseline | pruned | change |", "|---|---:|---:|---:|"]
    for label, key, kind in ROWS:
        b, p = base.get(key), pruned.get(key)
        if b is None and p is None:
            continue
        if kind == "pct" and b is not None and p is not None:
            change = f"{p - b:+.2f} pp"
        elif b and p:
            change = f"{b / p:.2f}x smaller" if p <= b else f"{p / b:.2f}x larger"
        else:
            change = "—"
        lines.append(f"| {label} | {_fmt(b, kind)} | {_fmt(p, kind)} | {change} |")
    return "\n".join(lines)


def _new_axes() -> tuple[Figure, Axes]:
    # The object-oriented API draws without pyplot's global state or a GUI backend, so a
    # library import never picks a backend for the caller; matplotlib loads only when plotting.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    return fig, fig.add_subplot()


def _save(fig: Figure, root: Path, name: str, files: list[str]) -> None:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    # atomic_write refuses a link in the plot's place (savefig would write through it)
    atomic_write(root / name, lambda f: f.write(buf.getvalue()))
    files.append(name)


_NUMBER = (int, float)
_MAX_REPORT_BYTES = 64 << 20
# (key, required, positive) of each measurement section and each unit row
_MEASURE = [("val_acc", True, False), ("macs", True, True)] + [
    (key, False, False) for _, key, _ in ROWS if key not in ("val_acc", "macs")
]
_UNIT = [
    ("channels_before", True, True), ("channels_after", True, False), ("reward", True, False),
    ("val_acc", True, False), ("macs", True, False), ("rollout_acc", False, False),
    ("det_reward_start", False, False), ("det_reward", False, False),
    ("agent_s", False, False), ("finetune_s", False, False),
]  # fmt: skip


def _check_numbers(d: Any, fields: list[tuple[str, bool, bool]], where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where} is not a mapping")
    for key, required, positive in fields:
        v = d.get(key)
        if v is None and not required:
            continue
        if not isinstance(v, _NUMBER) or isinstance(v, bool):
            raise ValueError(f"{where}.{key} is not a number")
        if positive and not v > 0:
            raise ValueError(f"{where}.{key} must be > 0")


def _validate(rep: Any) -> None:
    """Raise ValueError naming the first field of ``rep`` the report cannot use."""
    if not isinstance(rep, dict):
        raise ValueError("the top level is not a mapping")
    for section in ("baseline", "pruned"):
        _check_numbers(rep.get(section), _MEASURE, section)
    units = rep.get("units")
    if not isinstance(units, list):
        raise ValueError("units is not a list")
    for i, u in enumerate(units):
        _check_numbers(u, _UNIT, f"units[{i}]")
        if not isinstance(u.get("unit"), str) or not isinstance(u.get("chosen"), str):
            raise ValueError(f"units[{i}].unit or .chosen is not a string")
        if u.get("det_reward_start") is not None and u.get("det_reward") is None:
            raise ValueError(f"units[{i}].det_reward is missing")
        curve = u.get("reward_curve")
        if not isinstance(curve, list) or not all(
            isinstance(x, _NUMBER) and not isinstance(x, bool) for x in curve
        ):
            raise ValueError(f"units[{i}].reward_curve is not a list of numbers")
    config, model = rep.get("config"), rep.get("model")
    mode = config.get("reward", {}).get("mode") if isinstance(config, dict) else None
    if not isinstance(mode, str) or (model is not None and not isinstance(model, dict)):
        raise ValueError("config.reward.mode or model is missing or malformed")


def _plots(root: Path, units: list[dict[str, Any]], base: dict[str, Any]) -> list[str]:
    names = [u["unit"] for u in units]
    idx = list(range(len(units)))
    files: list[str] = []

    fig, ax = _new_axes()
    for u in units:
        ax.plot(u["reward_curve"], label=u["unit"], marker=".")
    ax.set_xlabel("policy update")
    ax.set_ylabel("mean reward of the K masks (symlog)")
    ax.set_yscale("symlog", linthresh=0.1)  # penalties beyond the bound dwarf the gains
    ax.set_title("Reward per update, per unit")
    if len(units) <= 12:
        ax.legend(fontsize=6)
    _save(fig, root, "reward_curves.png", files)

    fig, ax = _new_axes()
    ax.bar([i - 0.2 for i in idx], [u["channels_before"] for u in units], 0.4, label="before")
    ax.bar([i + 0.2 for i in idx], [u["channels_after"] for u in units], 0.4, label="after")
    ax.set_xticks(idx, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("filters")
    ax.set_title("Filters per unit")
    ax.legend()
    _save(fig, root, "filters.png", files)

    fig, ax = _new_axes()
    ax.bar(idx, [u["channels_after"] / u["channels_before"] for u in units])
    ax.set_xticks(idx, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("keep ratio")
    ax.set_title("Keep ratio per unit")
    _save(fig, root, "keep_ratio.png", files)

    fig, ax1 = _new_axes()
    steps = [0, *[i + 1 for i in idx]]
    ax1.plot(steps, [base["val_acc"], *[u["val_acc"] for u in units]], "o-", color="C0")
    ax1.set_ylabel("val accuracy (%) after fine-tune", color="C0")
    ax1.set_xlabel("units pruned")
    ax2 = ax1.twinx()
    ax2.plot(steps, [1.0, *[u["macs"] / base["macs"] for u in units]], "s--", color="C1")
    ax2.set_ylabel("MACs / baseline", color="C1")
    ax1.set_title("Accuracy and MACs along the walk")
    _save(fig, root, "walk.png", files)
    return files


def _not_pruned(rep: dict[str, Any]) -> list[str]:
    """Lines listing the units the masked-vs-cut check left unpruned (none: no lines)."""
    skipped = rep.get("not_pruned")
    if not isinstance(skipped, dict) or not skipped:
        return []
    lines = ["", "## Not pruned", "", "Units skipped before the search (the rest was pruned):", ""]
    return lines + [f"- `{name}`: {why}" for name, why in skipped.items()]


def _latency(rep: dict[str, Any]) -> list[str]:
    """Predicted vs measured latency lines (runs priced with a latency table; none: no lines)."""
    lat = rep.get("latency")
    if not isinstance(lat, dict) or not isinstance(lat.get("rows"), list):
        return []
    lines = [
        "", "## Latency: predicted vs measured", "",
        f"Table made on {lat.get('cpu', '?')}, runtime {lat.get('runtime', '?')}, "
        f"{lat.get('threads', '?')} thread(s), {lat.get('clock', 'wall')} clock, "
        f"{lat.get('malloc', 'system')} malloc; measured here the same way, under "
        f"{lat.get('measured_malloc', 'system')} malloc (median ms).", "",
        "| batch | model | predicted | measured | error |", "|---:|---|---:|---:|---:|",
    ]  # fmt: skip
    for row in lat["rows"]:
        for key in ("baseline", "pruned"):
            r = row.get(key) if isinstance(row, dict) else None
            if not isinstance(r, dict):
                continue
            try:
                lines.append(
                    f"| {int(row['batch'])} | {key} | {float(r['predicted_ms']):.3f} ms | "
                    f"{float(r['measured_ms']):.3f} ms | {float(r['error']):+.1%} |"
                )
            except (KeyError, TypeError, ValueError):
                continue
    ratios = []
    for row in lat["rows"]:
        ratio: Any = row.get("ratio") if isinstance(row, dict) else None
        try:
            p, m, e = (float(ratio[k]) for k in ("predicted", "measured", "error"))
            ratios.append(f"| {int(row['batch'])} | {p:.3f}x | {m:.3f}x | {e:+.1%} |")
        except (KeyError, TypeError, ValueError):
            continue
    if ratios:
        lines += [
            "", "Pruned over baseline, timed in alternating rounds (what `--target-latency` "
            "constrains; the machine's speed of the moment cancels):", "",
            "| batch | predicted | measured | error |", "|---:|---:|---:|---:|", *ratios,
        ]  # fmt: skip
    return lines


def _timing_lines(timing: Any) -> list[str]:
    """How the before/after latencies were timed (older reports do not say: a blank line)."""
    if not isinstance(timing, str):
        return [""]
    return ["", f"Latencies: the baseline and the pruned model timed {timing}; medians, IQRs "
            "in `report.json`.", ""]  # fmt: skip


def write_report(run_dir: str | Path) -> Path:
    """(Re)generate ``report.md`` and the plots from ``report.json``."""
    root = Path(run_dir)
    path = root / "report.json"
    if not path.is_file():
        raise RlpruneError(f"{root} has no report.json (is it a finished rlprune prune run?)")
    try:
        with open(path, "rb") as f:
            rep = json.loads(f.read(_MAX_REPORT_BYTES + 1))
        _validate(rep)
    except OSError as e:
        raise RlpruneError(f"cannot read {path}: {e.strerror or e}") from e
    except (ValueError, RecursionError, AttributeError) as e:  # JSONDecodeError, bad fields
        raise RlpruneError(f"{path} is not a valid rlprune report ({str(e)[:200]})") from e
    base, pruned, units = rep["baseline"], rep["pruned"], rep["units"]
    plots = _plots(root, units, base)
    mode = rep["config"]["reward"]["mode"]
    lines = [
        "# rlprune report",
        "",
        f"Model: `{(rep.get('model') or {}).get('name', 'custom')}`, mode: **{mode}**, "
        f"units: {len(units)}.",
        "",
        before_after_table(base, pruned),
        *_timing_lines(rep.get("latency_timing")),
        "## Per unit",
        "",
        "| # | unit | filters | chosen | reward | rollout acc | val acc after FT | MACs "
        "| rollouts (reused) | agent s | fine-tune s |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, u in enumerate(units):
        acc = "—" if u["rollout_acc"] is None else f"{u['rollout_acc']:.2f}%"
        reward = f"{u['reward']:.3f}"
        if u.get("det_reward_start") is not None:  # the deterministic policy, start -> end
            reward = f"{u['det_reward_start']:.3f} → {u['det_reward']:.3f}"
        lines.append(
            f"| {i} | `{u['unit']}` | {u['channels_before']} → {u['channels_after']} | "
            f"{u['chosen']} | {reward} | {acc} | {u['val_acc']:.2f}% | "
            f"{u['macs'] / base['macs']:.1%} | "
            f"{u.get('rollouts_scored', '—')} ({u.get('rollouts_reused', '—')}) | "
            f"{u.get('agent_s', float('nan')):.0f} | "
            f"{u.get('finetune_s', float('nan')):.0f} |"
        )
    lines += _latency(rep)
    lines += _not_pruned(rep)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    text = "\n".join(lines) + "\n"
    return atomic_write(root / "report.md", lambda f: f.write(text), mode="w")
