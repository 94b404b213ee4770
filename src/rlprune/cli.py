"""Command-line interface: ``rlprune {train,eval,inspect,prune,report,compare,demo}``.

The only module that prints. Seeds and devices are chosen here, once, and passed down.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from rlprune.distributed import resolve_device
from rlprune.errors import DataError, RlpruneError

__all__ = ["main"]

log = logging.getLogger("rlprune")


def _data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--dataset", required=required, help="fashion-mnist|cifar10|image-folder|digits|synthetic"
    )
    p.add_argument("--data-dir", default=None, help="where the dataset files are")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST if missing")
    p.add_argument("--max-train", type=int, default=None, help="use only N training images")
    p.add_argument(
        "--data-max-mb", type=float, default=None, help="memory cap of the training tensor (MiB)"
    )


def _load_data(args: argparse.Namespace, seed: int = 0) -> Any:
    from rlprune.data import load_dataset

    return load_dataset(
        args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        seed=seed,
        max_train=args.max_train,
        max_mb=getattr(args, "data_max_mb", None),
    )


def _check_fit(spec: Any, data: Any) -> None:
    if spec is None:
        return
    if spec.in_channels != data.in_channels or spec.num_classes != data.num_classes:
        raise DataError(
            f"the checkpoint's model expects {spec.in_channels}-channel input and "
            f"{spec.num_classes} classes; dataset {data.name} has {data.in_channels} channel(s) "
            f"and {data.num_classes} classes"
        )


def _yaml_scalar(value: Any) -> str:
    """``value`` as a YAML scalar for ``--set``: ``str(1e-05)`` would load as a string."""
    return yaml.safe_dump(value).splitlines()[0]


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and probe that a file can be written there (one clear error if not)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise RlpruneError(f"cannot write to {folder}: {e.strerror or e}") from e


def _metrics_line(name: str, m: dict[str, Any]) -> str:
    test = "—" if m.get("test_acc") is None else f"{m['test_acc']:.2f}%"
    return (
        f"{name:<9} test {test:>7}  MACs {m['macs'] / 1e6:7.2f}M  params {m['params'] / 1e3:7.1f}k  "
        f"latency b1 {m['latency_b1_ms']:.2f} ms  b64 {m['latency_b64_ms']:.2f} ms"
    )


# ----------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from rlprune.checkpoint import save_checkpoint
    from rlprune.config import TrainConfig, load_config
    from rlprune.models import ModelSpec
    from rlprune.pruning import count_macs_params
    from rlprune.train import evaluate, train

    sets = list(args.set or [])
    for key in ("epochs", "lr", "batch_size", "seed"):
        if getattr(args, key) is not None:
            sets.append(f"{key}={_yaml_scalar(getattr(args, key))}")
    cfg = load_config(TrainConfig, args.config, sets)
    torch.manual_seed(cfg.seed)
    data = _load_data(args, cfg.seed)
    spec = ModelSpec(args.model, data.in_channels, data.num_classes, data.input_size, args.width)
    model = spec.build()
    out = Path(args.out)
    _check_writable(out)  # fail now, not after training
    device = resolve_device(args.device)

    best = [-1.0]

    def on_epoch(epoch: int, loss: float, val_acc: float) -> None:
        # The best-so-far checkpoint is on disk after every epoch: a crash loses one epoch.
        mark = ""
        if val_acc > best[0]:
            best[0] = val_acc
            meta = {"epoch": epoch, "val_acc": val_acc, "dataset": data.name, "partial": True}
            save_checkpoint(out / "model.pt", model, spec, meta=meta)
            mark = "  (best, saved)"
        print(f"epoch {epoch}: train loss {loss:.4f}  val acc {val_acc:.2f}%{mark}", flush=True)

    t0 = time.perf_counter()
    history = train(model, data, cfg, device, progress=not args.quiet, on_epoch=on_epoch)
    elapsed = time.perf_counter() - t0
    model.cpu()
    test_acc = evaluate(model, data.test)
    macs, params = count_macs_params(model, spec.example_input())
    meta = {
        "history": history,
        "test_acc": test_acc,
        "train_seconds": elapsed,
        "dataset": data.name,
        "epochs": cfg.epochs,
    }
    save_checkpoint(out / "model.pt", model, spec, meta=meta)
    print(
        f"test acc {test_acc:.2f}%  MACs {macs / 1e6:.2f}M  params {params / 1e3:.1f}k  "
        f"({elapsed:.0f} s, {elapsed / cfg.epochs:.0f} s/epoch)  -> {out / 'model.pt'}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rlprune.checkpoint import load_model
    from rlprune.pruning import count_macs_params
    from rlprune.train import evaluate

    model, spec, _meta = load_model(args.checkpoint)
    data = _load_data(args)
    _check_fit(spec, data)
    acc = evaluate(model, data.test)
    macs, params = count_macs_params(model, data.test.images[:1])
    print(f"test acc {acc:.2f}%  MACs {macs / 1e6:.2f}M  params {params / 1e3:.1f}k")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from rlprune.checkpoint import load_model
    from rlprune.pruning import find_units

    model, spec, _ = load_model(args.checkpoint)
    if spec is None:
        raise RlpruneError("inspect needs a zoo checkpoint (it stores the input size)")
    units = find_units(model, spec.example_input(), args.exclude or ())
    print(f"{'#':>3}  {'unit':<22} {'channels':>8} {'MAC share':>9}  coupled modules")
    for u in units:
        print(
            f"{u.depth:>3}  {u.name:<22} {u.channels:>8} {u.mac_share:>9.1%}  "
            f"out: {', '.join(u.producers)} | in: {', '.join(u.consumers)}"
        )
    return 0


def _prune_config(args: argparse.Namespace) -> Any:
    from rlprune.config import PruneConfig, load_config

    sets = list(args.set or [])
    if args.max_acc_drop is not None and args.target_macs is not None:
        raise RlpruneError(
            "choose one mode: --max-acc-drop (accuracy-bounded) or --target-macs (budget)"
        )
    if args.max_acc_drop is not None:
        sets += ["reward.mode=accuracy", f"reward.max_acc_drop={_yaml_scalar(args.max_acc_drop)}"]
    if args.target_macs is not None:
        sets += [
            f"reward.mode={args.mode or 'budget'}",
            f"reward.target_macs={_yaml_scalar(args.target_macs)}",
        ]
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    return load_config(PruneConfig, args.config, sets)


def cmd_prune(args: argparse.Namespace) -> int:
    from rlprune.checkpoint import load_model
    from rlprune.distributed import init_distributed
    from rlprune.report import before_after_table
    from rlprune.search import prune

    cfg = _prune_config(args)
    torch.manual_seed(cfg.seed)
    # Under torchrun this joins the job (gloo on CPU, NCCL on CUDA); otherwise a no-op.
    ctx, device = init_distributed(resolve_device(args.device))
    model, spec, _ = load_model(args.checkpoint)
    data = _load_data(args, seed=0)
    _check_fit(spec, data)
    t0 = time.perf_counter()
    result = prune(
        model,
        data.train,
        data.val,
        cfg,
        test=data.test,
        out_dir=args.out,
        spec=spec,
        hflip=data.hflip,
        resume=args.resume,
        device=device,
        progress=not args.quiet and ctx.is_main,
        dist_ctx=ctx,
    )
    if ctx.is_main:
        print(before_after_table(result.baseline, result.pruned))
        print(
            f"\nsearch wall time {time.perf_counter() - t0:.0f} s"
            + (f" on {ctx.world_size} processes" if ctx.active else "")
            + f"; report: {Path(args.out) / 'report.md'}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rlprune.report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Baseline vgg-small on Fashion-MNIST (cached), then the accuracy-bounded RL search."""
    from rlprune.checkpoint import CheckpointError, load_checkpoint

    out = Path(args.out)
    base = out / "base" / "model.pt"
    try:
        load_checkpoint(base)
        print(f"using cached baseline {base}")
    except CheckpointError:
        print("training the baseline: vgg-small, 3 epochs on Fashion-MNIST")
        ns = argparse.Namespace(
            model="vgg-small",
            dataset="fashion-mnist",
            data_dir=args.data_dir,
            download=False,
            max_train=None,
            width=1.0,
            out=str(base.parent),
            epochs=3.0,
            lr=None,
            batch_size=None,
            seed=0,
            config=None,
            set=[],
            device=args.device,
            quiet=args.quiet,
        )
        cmd_train(ns)
    prune_dir = out / "prune"
    ns = argparse.Namespace(
        checkpoint=str(base),
        dataset="fashion-mnist",
        data_dir=args.data_dir,
        download=False,
        max_train=None,
        out=str(prune_dir),
        max_acc_drop=1.0,
        target_macs=None,
        mode=None,
        config=args.config,
        set=args.set,
        seed=0,
        resume=prune_dir.exists(),
        device=args.device,
        quiet=args.quiet,
    )
    return cmd_prune(ns)


def cmd_compare(args: argparse.Namespace) -> int:
    from rlprune.compare import run_compare

    print(run_compare(args))
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlprune", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="cpu", help="cpu | cuda | auto")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="train a zoo model")
    t.add_argument("--model", required=True)
    _data_args(t)
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=float, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    t.add_argument("--width", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--config", default=None)
    t.add_argument("--set", action="append", metavar="KEY=VALUE")
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="test accuracy, MACs, params of a checkpoint")
    e.add_argument("--checkpoint", required=True)
    _data_args(e)
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("inspect", help="print the prunable units of a checkpoint")
    i.add_argument("--checkpoint", required=True)
    i.add_argument("--exclude", action="append", metavar="MODULE")
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser("prune", help="RL layer-by-layer pruning")
    r.add_argument("--checkpoint", required=True)
    _data_args(r)
    r.add_argument("--out", required=True)
    r.add_argument("--max-acc-drop", dest="max_acc_drop", type=float, default=None)
    r.add_argument("--target-macs", dest="target_macs", type=float, default=None)
    r.add_argument("--mode", choices=["budget", "amc"], default=None, help="with --target-macs")
    r.add_argument("--config", default=None)
    r.add_argument("--set", action="append", metavar="KEY=VALUE")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--resume", action="store_true")
    common(r)
    r.set_defaults(func=cmd_prune)

    rp = sub.add_parser("report", help="regenerate report.md and plots of a run")
    rp.add_argument("run_dir")
    rp.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", help="RL vs heuristic pruners at equal MACs")
    c.add_argument("--checkpoint", required=True)
    _data_args(c)
    c.add_argument("--out", required=True)
    c.add_argument("--targets", default="0.5,0.3")
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--methods", default=None, help="comma list (default: all)")
    c.add_argument("--config", default=None)
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    common(c)
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="baseline + RL search on Fashion-MNIST")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--config", default=None)
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    common(d)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # rlprune's own logs at INFO; third-party libraries (onnxscript, torch) only warn.
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("rlprune").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except RlpruneError as e:
        print(f"rlprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_line(args), file=sys.stderr)
        return 130


def _interrupted_line(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind: only a search keeps its progress (crash-safe state)."""
    if args.command == "prune":
        return (
            f"rlprune: interrupted; progress is saved in {args.out} — rerun the same command "
            "with --resume to continue"
        )
    if args.command == "demo":
        return "rlprune: interrupted; progress is saved — rerun `rlprune demo` to continue"
    return "rlprune: interrupted"
