"""The subcommands and options of ``rlprune``: every option says its default and its range.

Only argparse set-up lives here; :mod:`rlprune.cli` builds the top-level parser, passes the
command functions in, and runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import TypeAlias

__all__ = ["DESCRIPTION", "EPILOG", "add_commands", "float_list"]

Command = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DESCRIPTION = (
    "Prune the convolution filters of a trained PyTorch CNN with a reinforcement-learning "
    "agent: it decides, layer by layer, which filters to keep so the network gets smaller "
    "and faster within an accuracy or MAC budget."
)
EPILOG = """example:
  rlprune train --model vgg-small --dataset fashion-mnist --out runs/base
  rlprune prune --checkpoint runs/base/model.pt --dataset fashion-mnist \\
                --max-acc-drop 1 --out runs/pruned

`rlprune COMMAND --help` lists the options of a command; `rlprune demo` runs both steps."""

_SET_HELP = (
    "override one config value (dotted key, YAML value), after --config; repeatable, "
    "e.g. {example} (default: none)"
)
_SEARCH_KEYS = "every key is in a prune run's config.yaml"
_DEVICE_HELP = "where training and fine-tuning run: cpu | cuda | cuda:N | auto (default: cpu)"


def float_list(text: str) -> tuple[float, ...]:
    """``0.5,0.3`` -> ``(0.5, 0.3)`` (ranges are checked by the config that receives them)."""
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.5,0.3, got {text!r}"
        ) from None


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help="fashion-mnist | cifar10 | image-folder | digits | synthetic (required)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder with the dataset files (default: the system copy or the per-user cache; "
        "required for image-folder)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download Fashion-MNIST (checksum verified) if it is not found (default: off)",
    )
    p.add_argument(
        "--max-train",
        type=int,
        default=None,
        metavar="N",
        help="use only N >= 2 training images (default: all)",
    )
    p.add_argument(
        "--data-max-mb",
        type=float,
        default=None,
        metavar="MIB",
        help="memory cap (> 0 MiB) of the training tensor; above it training images are "
        "subsampled (default: no cap)",
    )


def _config_args(p: argparse.ArgumentParser, keys: str, example: str) -> None:
    p.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help=f"YAML file of settings; {keys} (default: built-in defaults)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help=_SET_HELP.format(example=example),
    )


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help=_DEVICE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: shown)")


def _malloc_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steady-malloc",
        action="store_true",
        help="keep large blocks on glibc's heap in this process (no page faults per layer "
        "output; latencies then match a table profiled with it; deploy with "
        "MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 to match) "
        "(default: off)",
    )


def _add_train(sub: Subparsers, cmd: Command) -> None:
    from rlprune.models import MODELS

    t = sub.add_parser("train", help="train a zoo model (the baseline to prune)")
    t.add_argument("--model", required=True, help=f"{' | '.join(MODELS)} (required)")
    _data_args(t)
    t.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for model.pt: new, empty, or an earlier train run with --overwrite (required)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier train run in --out (never a folder that is not a run's; "
        "default: refuse)",
    )
    t.add_argument(
        "--epochs", type=float, default=None, metavar="E", help="> 0, may be fractional (default 3)"
    )
    t.add_argument(
        "--lr", type=float, default=None, help="peak OneCycle SGD rate > 0 (default 0.1)"
    )
    t.add_argument("--batch-size", type=int, default=None, metavar="N", help=">= 1 (default 128)")
    t.add_argument(
        "--width", type=float, default=1.0, metavar="W", help="channel multiplier > 0 (default 1)"
    )
    t.add_argument("--seed", type=int, default=None, help="weights, data order (default 0)")
    from rlprune.config import TrainConfig

    keys = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
    _config_args(t, f"keys: {keys}", "--set lr=0.05")
    _run_args(t)
    t.set_defaults(func=cmd)


def _add_prune(sub: Subparsers, cmd: Command) -> None:
    r = sub.add_parser(
        "prune",
        help="RL filter pruning of a checkpoint (layer by layer, or jointly for MAC and latency budgets)",
    )
    r.add_argument("--checkpoint", required=True, help="model.pt to prune (required)")
    _data_args(r)
    r.add_argument(
        "--out", required=True, metavar="DIR", help="run folder: report, model, state (required)"
    )
    r.add_argument(
        "--max-acc-drop",
        type=float,
        default=None,
        metavar="PP",
        help="accuracy-bounded mode: tolerated accuracy drop in percentage points, > 0 "
        "(default: this mode with 1, unless --target-macs is given)",
    )
    r.add_argument(
        "--target-macs",
        type=float,
        default=None,
        metavar="FRACTION",
        help="budget mode: MACs to reach as a fraction of the baseline's, in (0, 1); "
        "exclusive with --max-acc-drop (default: not set)",
    )
    r.add_argument(
        "--target-latency",
        type=float,
        default=None,
        metavar="FRACTION",
        help="budget mode on measured latency: latency to reach as a fraction of the "
        "baseline's (batch reward.latency_batch, default 64), in (0, 1); sets "
        "reward.efficiency=latency (default: not set)",
    )
    r.add_argument(
        "--latency-table",
        default=None,
        metavar="JSON",
        help="latency table from `rlprune profile` (e.g. made on the deployment machine); "
        "sets reward.efficiency=latency (default: profiled on the fly when latency is priced)",
    )
    _malloc_arg(r)
    r.add_argument(
        "--mode",
        choices=["budget", "amc"],
        default=None,
        help="reward with a budget: budget | amc (AMC's -error*log(cost)) (default: budget)",
    )
    _config_args(r, _SEARCH_KEYS, "--set agent.samples=16")
    r.add_argument("--seed", type=int, default=None, help="search seed (default 0)")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out after a crash or Ctrl-C; refuses a changed config, "
        "checkpoint or dataset (default: start fresh in a new or empty --out)",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier prune run in --out (never a folder that is not a run's; "
        "default: refuse)",
    )
    _run_args(r)
    r.set_defaults(func=cmd)


def _add_compare(sub: Subparsers, cmd: Command) -> None:
    c = sub.add_parser("compare", help="RL vs heuristic pruners at equal MACs and fine-tuning")
    c.add_argument("--checkpoint", required=True, help="baseline model.pt (required)")
    _data_args(c)
    _malloc_arg(c)
    c.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for compare.json/.md, pareto.png and the per-cell results in cells/; a "
        "rerun reuses finished cells (required)",
    )
    c.add_argument(
        "--targets",
        type=float_list,
        default="0.5,0.3",
        metavar="T1,T2",
        help="MAC fractions in (0, 1), comma-separated (default: 0.5,0.3)",
    )
    c.add_argument("--seeds", type=int, default=3, help="seeds per target, >= 1 (default 3)")
    c.add_argument(
        "--seed",
        type=int,
        default=None,
        help="first seed; --seeds 1 --seed S runs seed S alone and adds it to the table in "
        "--out (default: the config's seed, 0)",
    )
    c.add_argument(
        "--methods",
        default=None,
        metavar="M1,M2",
        help="comma-separated subset of rl, rl-layerwise, rl-joint, random, l1-uniform, "
        "global-magnitude, taylor, bn-scale, l1-rl-ratios, tp-iterative, random-search "
        "(default: all but rl-layerwise and rl-joint: rl runs the config's strategy)",
    )
    _config_args(c, _SEARCH_KEYS, "--set finetune_steps=50")
    _run_args(c)
    c.set_defaults(func=cmd)


def _add_profile(sub: Subparsers, cmd: Command) -> None:
    from rlprune.pruning.latency import LAYER_TIMINGS

    p = sub.add_parser("profile", help="measure a per-unit latency table on this machine")
    p.add_argument("--checkpoint", required=True, help="the unpruned zoo model.pt (required)")
    p.add_argument("--out", required=True, metavar="JSON", help="table file to write (required)")
    p.add_argument(
        "--batch-size",
        type=float_list,
        default="1,64",
        metavar="B1,B2",
        help="batch sizes, one table each, comma-separated (default: 1,64)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads, >= 1 (default: torch's number)"
    )
    p.add_argument(
        "--runtime",
        choices=["torch", "export", "onnxruntime"],
        default="torch",
        help="where whole models are timed: eager torch, the torch.export program, or ONNX "
        "Runtime (default: torch)",
    )
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what is timed: elapsed time, or the CPU time of the one timing thread, which "
        "leaves out time the core spent elsewhere (needs --threads 1) (default: wall)",
    )
    _malloc_arg(p)
    p.add_argument(
        "--layers",
        choices=LAYER_TIMINGS,
        default="alone",
        help="alone: each layer's grid timed alone; in-model: plus each layer's extra time inside "
        "the whole forward (fresh output blocks, cold inputs), measured at the uniform cuts; "
        "eager torch only (default: alone)",
    )
    p.add_argument(
        "--nchw", action="store_true", help="time in NCHW, not NHWC (default: NHWC, as searched)"
    )
    p.set_defaults(func=cmd)


def add_commands(sub: Subparsers, commands: Mapping[str, Command]) -> None:
    """Add every subcommand; ``commands`` maps its name to the function it runs."""
    _add_train(sub, commands["train"])

    e = sub.add_parser("eval", help="test accuracy, MACs and params of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="model.pt to evaluate (required)")
    _data_args(e)
    e.set_defaults(func=commands["eval"])

    i = sub.add_parser("inspect", help="print the prunable units of a checkpoint")
    i.add_argument("--checkpoint", required=True, help="a zoo model.pt (required)")
    i.add_argument(
        "--exclude",
        action="append",
        metavar="MODULE",
        help="module never pruned; repeatable (default: none; the classifier never is)",
    )
    i.set_defaults(func=commands["inspect"])

    _add_prune(sub, commands["prune"])

    rp = sub.add_parser("report", help="regenerate report.md and the plots of a prune run")
    rp.add_argument("run_dir", help="a finished `rlprune prune` run folder")
    rp.set_defaults(func=commands["report"])

    _add_compare(sub, commands["compare"])
    _add_profile(sub, commands["profile"])

    d = sub.add_parser("demo", help="train vgg-small on Fashion-MNIST, then prune it (~5 min)")
    d.add_argument(
        "--out", default="runs/demo", metavar="DIR", help="output folder (default: runs/demo)"
    )
    d.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="Fashion-MNIST folder (default: the system copy or the per-user cache)",
    )
    _config_args(d, _SEARCH_KEYS, "--set agent.samples=16")
    _run_args(d)
    d.set_defaults(func=commands["demo"])
