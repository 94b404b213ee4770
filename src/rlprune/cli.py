"""Command-line interface: ``rlprune {train,eval,inspect,prune,report,compare,profile,demo}``.

Developer notes: the only module that prints. Seeds and devices are chosen here, once, and
passed down. Each ``cmd_*`` turns its arguments into typed configs and calls a typed function
(``_train``, ``_prune``, :func:`rlprune.compare.compare`), which ``demo`` calls directly.
Library modules are imported inside the commands so that ``rlprune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlprune import __version__
from rlprune.cli_support import DataSource
from rlprune.cli_support import check_fit as _check_fit
from rlprune.cli_support import check_writable as _check_writable
from rlprune.cli_support import device as _device
from rlprune.cli_support import interrupted_line as _interrupted_line
from rlprune.cli_support import load_data as _load_data
from rlprune.cli_support import one_line as _one_line
from rlprune.cli_support import yaml_scalar as _yaml_scalar
from rlprune.errors import RlpruneError

if TYPE_CHECKING:
    from rlprune.compare import CompareConfig
    from rlprune.config import PruneConfig, TrainConfig

__all__ = ["main"]

log = logging.getLogger("rlprune")


# ----------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from rlprune.config import TrainConfig, load_config

    sets = list(args.set or [])
    for key in ("epochs", "lr", "batch_size", "seed"):
        if getattr(args, key) is not None:
            sets.append(f"{key}={_yaml_scalar(getattr(args, key))}")
    cfg = load_config(TrainConfig, args.config, sets)
    source = DataSource.from_args(args)
    out = Path(args.out)
    return _train(args.model, args.width, source, cfg, out, args.device, args.quiet, args.overwrite)


def _train(
    model_name: str,
    width: float,
    source: DataSource,
    cfg: TrainConfig,
    out: Path,
    device_name: str,
    quiet: bool,
    overwrite: bool = False,
) -> int:
    """Train a zoo model and save the best-so-far, then the final checkpoint to ``out``."""
    from rlprune.checkpoint import save_checkpoint
    from rlprune.models import ModelSpec
    from rlprune.pruning import count_macs_params
    from rlprune.runfolder import RunIdentity, claim, config_hash, tensors_fingerprint
    from rlprune.train import evaluate, train

    device = _device(device_name)
    torch.manual_seed(cfg.seed)
    data = _load_data(source, cfg.seed)
    spec = ModelSpec(model_name, data.in_channels, data.num_classes, data.input_size, width)
    model = spec.build()
    _check_writable(out)  # fail now, not after training
    splits = {f"{n}.{p}": getattr(getattr(data, n), p) for n in ("train", "val", "test")
              for p in ("images", "labels")}  # fmt: skip
    ident = RunIdentity(
        "train",
        config_hash(cfg, model=model_name, width=width),
        None,
        tensors_fingerprint(splits.items()),
    )
    claim(out, ident, resume=False, overwrite=overwrite)

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
    history = train(model, data, cfg, device, progress=not quiet, on_epoch=on_epoch)
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
    data = _load_data(DataSource.from_args(args), spec=spec)
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


def _prune_config(args: argparse.Namespace) -> PruneConfig:
    from rlprune.config import PruneConfig, load_config

    sets = list(args.set or [])
    given = [f for f, v in (("--max-acc-drop", args.max_acc_drop), ("--target-macs",
             args.target_macs), ("--target-latency", args.target_latency)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise RlpruneError(
            f"choose one mode: {' or '.join(given)} (--max-acc-drop: accuracy-bounded; "
            "--target-macs / --target-latency: budget)"
        )
    if args.max_acc_drop is not None:
        sets += ["reward.mode=accuracy", f"reward.max_acc_drop={_yaml_scalar(args.max_acc_drop)}"]
    for key in ("target_macs", "target_latency"):
        if getattr(args, key) is not None:
            sets += [
                f"reward.mode={args.mode or 'budget'}",
                f"reward.{key}={_yaml_scalar(getattr(args, key))}",
            ]
    if args.target_latency is not None or args.latency_table is not None:
        sets.append("reward.efficiency=latency")
    if args.latency_table is not None:
        sets.append(f"reward.latency_table={_yaml_scalar(str(args.latency_table))}")
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    return load_config(PruneConfig, args.config, sets)


def cmd_prune(args: argparse.Namespace) -> int:
    cfg = _prune_config(args)
    source = DataSource.from_args(args)
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise RlpruneError("choose one: --resume (continue the run) or --overwrite (replace it)")
    return _prune(
        Path(args.checkpoint),
        source,
        cfg,
        out,
        args.resume,
        args.device,
        args.quiet,
        args.overwrite,
    )


def _prune(
    checkpoint: Path,
    source: DataSource,
    cfg: PruneConfig,
    out: Path,
    resume: bool,
    device_name: str,
    quiet: bool,
    overwrite: bool = False,
) -> int:
    """The RL search on ``checkpoint``; prints the before/after table (rank 0 under torchrun)."""
    from rlprune.checkpoint import load_model
    from rlprune.distributed import init_distributed
    from rlprune.report import before_after_table
    from rlprune.search import prune

    torch.manual_seed(cfg.seed)
    # Under torchrun this joins the job (gloo on CPU, NCCL on CUDA); otherwise a no-op.
    ctx, device = init_distributed(_device(device_name))
    model, spec, _ = load_model(checkpoint)
    data = _load_data(source, seed=0, spec=spec)
    _check_fit(spec, data)
    t0 = time.perf_counter()
    result = prune(
        model,
        data.train,
        data.val,
        cfg,
        test=data.test,
        out_dir=out,
        spec=spec,
        hflip=data.hflip,
        resume=resume,
        overwrite=overwrite,
        device=device,
        progress=not quiet and ctx.is_main,
        dist_ctx=ctx,
    )
    if ctx.is_main:
        print(before_after_table(result.baseline.to_dict(), result.pruned.to_dict()))
        print(
            f"\nsearch wall time {time.perf_counter() - t0:.0f} s"
            + (f" on {ctx.world_size} processes" if ctx.active else "")
            + f"; report: {out / 'report.md'}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rlprune.report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Measure the latency table of a checkpoint on this machine and save it as JSON."""
    from rlprune.checkpoint import load_model
    from rlprune.models import set_layout
    from rlprune.pruning.profile import profile_latency

    model, spec, _ = load_model(args.checkpoint)
    if spec is None:
        raise RlpruneError("profile needs a zoo checkpoint (it stores the input size)")
    batches = tuple(int(b) for b in args.batch_size)
    if not batches or any(b != float(b) or not 1 <= b <= 4096 for b in args.batch_size):
        raise RlpruneError(f"--batch-size: whole numbers in 1..4096, got {args.batch_size}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise RlpruneError(f"--threads must be in 1..1024, got {args.threads}")
    out = Path(args.out)
    _check_writable(out.parent if str(out.parent) else Path("."))
    set_layout(model, not args.nchw)
    t0 = time.perf_counter()
    lut = profile_latency(
        model, spec.example_input(), batches, args.threads, args.runtime, clock=args.clock,
        layers=args.layers,
    )  # fmt: skip
    lut.save(out)
    for b, table in sorted(lut.tables.items()):
        errs = [abs(p / m - 1) for _, m, p in table.calibration]
        print(
            f"batch {b}: {len(table.terms)} layer terms, full model {table.calibration[0][1]:.3f} "
            f"ms measured, fit within {max(errs):.1%} at uniform cuts"
        )
    print(
        f"{lut.machine['cpu']}, {lut.runtime}, {lut.threads} thread(s), {lut.clock} clock, "
        f"{lut.machine['malloc']} malloc, layers {lut.layers}; "
        f"{time.perf_counter() - t0:.0f} s -> {out}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Baseline vgg-small on Fashion-MNIST (cached), then the accuracy-bounded RL search."""
    from rlprune.checkpoint import CheckpointError, load_checkpoint
    from rlprune.config import PruneConfig, TrainConfig, load_config

    out = Path(args.out)
    base = out / "base" / "model.pt"
    source = DataSource("fashion-mnist", data_dir=args.data_dir)
    try:
        load_checkpoint(base)
        print(f"using cached baseline {base}")
    except CheckpointError:
        print("training the baseline: vgg-small, 3 epochs on Fashion-MNIST")
        train_cfg = TrainConfig(epochs=3.0, seed=0)
        _train("vgg-small", 1.0, source, train_cfg, base.parent, args.device, args.quiet)
    prune_dir = out / "prune"
    sets = [*(args.set or []), "reward.mode=accuracy", "reward.max_acc_drop=1.0", "seed=0"]
    cfg = load_config(PruneConfig, args.config, sets)
    return _prune(base, source, cfg, prune_dir, prune_dir.exists(), args.device, args.quiet)


def _compare_config(args: argparse.Namespace) -> CompareConfig:
    from rlprune.compare import DEFAULT_METHODS, CompareConfig
    from rlprune.config import PruneConfig, load_config

    sets = list(args.set or [])
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    asked = args.methods.split(",") if args.methods is not None else DEFAULT_METHODS
    return CompareConfig(
        checkpoint=Path(args.checkpoint),
        dataset=args.dataset,
        out=Path(args.out),
        targets=args.targets,
        seeds=args.seeds,
        methods=tuple(m.strip() for m in asked if m.strip()),
        prune=load_config(PruneConfig, args.config, sets),
        data_dir=None if args.data_dir is None else Path(args.data_dir),
        download=args.download,
        max_train=args.max_train,
        data_max_mb=args.data_max_mb,
        device=args.device,
        quiet=args.quiet,
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from rlprune.compare import compare

    result = compare(_compare_config(args))
    print(result.markdown, end="")
    if result.cells_reused:
        print(f"({result.cells_reused} cell(s) reused from {result.out / 'cells'})")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from rlprune.cli_args import DESCRIPTION, EPILOG, add_commands

    p = argparse.ArgumentParser(
        prog="rlprune",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"rlprune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {
        "train": cmd_train,
        "eval": cmd_eval,
        "inspect": cmd_inspect,
        "prune": cmd_prune,
        "report": cmd_report,
        "compare": cmd_compare,
        "profile": cmd_profile,
        "demo": cmd_demo,
    }
    add_commands(sub, commands)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # rlprune's own logs at INFO; third-party libraries (onnxscript, torch) only warn.
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("rlprune").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if getattr(args, "steady_malloc", False):  # process-wide: chosen once, here
            from rlprune.machine import steady_malloc

            if not steady_malloc():
                raise RlpruneError("--steady-malloc needs glibc's malloc (mallopt), not found here")
        return int(args.func(args))
    except RlpruneError as e:
        print(f"rlprune: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except MemoryError:
        print("rlprune: error: out of memory (inputs too large for this machine)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_line(args), file=sys.stderr)
        return 130
