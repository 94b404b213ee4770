"""One cell of ``rlprune compare``: a (method, target, seed) triple.

A method is a *runner*: it gets the shared :class:`CellContext` and returns a :class:`MethodRun`
(pruned model, kept channels per unit, search and fine-tune seconds). :func:`equal_fine_tune`
gives a heuristic the fine-tuning budget every method gets. The built-in runners are
:func:`run_rl` (the agent) and :func:`heuristic_runner` (a :mod:`rlprune.baselines` method).

Every measured cell is written atomically to ``OUT/cells/{method}/t{target}_s{seed}.json``
together with the fingerprint of what produced it (checkpoint hash, data, per-cell search
config, fine-tune steps). :class:`CellStore` loads finished cells instead of recomputing them
and refuses a cell whose fingerprint differs from the current one.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.baselines import prune_to_target
from rlprune.checkpoint import atomic_write
from rlprune.config import PruneConfig, SearchStrategy
from rlprune.data import DatasetSplits
from rlprune.errors import ConfigError
from rlprune.models import ModelSpec, set_layout
from rlprune.peers import random_search, tp_iterative
from rlprune.search import PruneResult, prune
from rlprune.search.records import UnitRecord
from rlprune.train import fine_tune

__all__ = [
    "CellContext",
    "CellStore",
    "MethodRun",
    "Runner",
    "equal_fine_tune",
    "file_sha256",
    "heuristic_runner",
    "rl_runner",
    "rollout_equivalents",
    "run_random_search",
    "run_tp_iterative",
]

log = logging.getLogger(__name__)

CELL_FORMAT = "rlprune-compare-cell"
CELL_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CellContext:
    """What every method needs for one target and seed.

    ``model`` is the baseline, shared by every cell: a runner prunes a copy, never ``model``.
    ``cfg`` is the search config of this cell (``seed`` and the budget-mode ``target_macs`` set);
    ``rl_counts`` the channels ``rl`` kept per unit for this target and seed (``None`` before
    ``rl`` ran, or when it is not part of the comparison).
    """

    model: nn.Module
    spec: ModelSpec | None
    data: DatasetSplits
    cfg: PruneConfig
    target: float
    ft_steps: int
    out: Path
    device: torch.device
    quiet: bool
    rl_counts: dict[str, int] | None = None
    rl_rollouts: int | None = None  # most reward-set evaluations an rl search spent here

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def baseline_copy(self) -> nn.Module:
        """A CPU copy of the baseline to prune."""
        return copy.deepcopy(self.model).cpu()


@dataclasses.dataclass(frozen=True)
class MethodRun:
    """What a runner returns: the pruned model, channels kept per unit, wall seconds."""

    model: nn.Module
    kept: dict[str, int]
    search_s: float
    finetune_s: float = 0.0
    rollouts: int | None = None  # reward-set evaluations the search spent (search methods)


Runner = Callable[[CellContext], MethodRun]
"""A comparison method: prunes a copy of ``ctx.model`` to ``ctx.target``."""


def equal_fine_tune(ctx: CellContext, model: nn.Module, desc: str) -> float:
    """Fine-tune ``model`` with the budget every method gets; returns the wall seconds.

    ``ctx.ft_steps`` SGD steps as one cosine schedule, with the search's ``finetune_lr``,
    ``batch_size``, ``weight_decay``, augmentation and memory layout.
    """
    cfg = ctx.cfg
    set_layout(model, cfg.channels_last)  # the layout rl's search fine-tunes in
    t0 = time.perf_counter()
    fine_tune(
        model,
        ctx.data.train,
        ctx.ft_steps,
        cfg.finetune_lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        hflip=ctx.data.hflip,
        generator=torch.Generator().manual_seed(cfg.seed),
        device=ctx.device,
        progress=not ctx.quiet,
        desc=desc,
    )
    return time.perf_counter() - t0


def _kept_counts(units: Sequence[UnitRecord]) -> dict[str, int]:
    """Channels kept per unit, from :attr:`~rlprune.search.PruneResult.units`."""
    return {u.unit: int(u.channels_after) for u in units}


def rollout_equivalents(res: PruneResult, cfg: PruneConfig) -> int:
    """Reward-set evaluations a search spent: rollouts times the images each one scored, in
    units of the whole reward set (the joint strategy scores slices of it)."""
    if res.strategy == "joint":
        per = min(cfg.joint.images, cfg.rollout.reward_set) / cfg.rollout.reward_set
        return round(cfg.joint.steps * cfg.joint.samples * per)
    return sum(u.rollouts_scored for u in res.units)


def rl_runner(strategy: SearchStrategy | None = None) -> Runner:
    """The agent in budget mode (``strategy`` overrides the config's); its time is the whole
    ``prune()`` call (fine-tuning included)."""
    name = "rl" if strategy is None else f"rl-{strategy}"

    def run(ctx: CellContext) -> MethodRun:
        cfg = ctx.cfg if strategy is None else dataclasses.replace(ctx.cfg, strategy=strategy)
        run_dir = ctx.out / name / f"t{ctx.target:g}_s{ctx.seed}"
        t0 = time.perf_counter()
        res = prune(
            ctx.model,
            ctx.data.train,
            ctx.data.val,
            cfg,
            test=ctx.data.test,
            out_dir=run_dir,
            spec=ctx.spec,
            hflip=ctx.data.hflip,
            resume=(run_dir / "config.yaml").exists(),  # a rerun reuses a finished search
            device=ctx.device,
            progress=not ctx.quiet,
        )
        search_s = time.perf_counter() - t0
        return MethodRun(
            res.model, _kept_counts(res.units), search_s, rollouts=rollout_equivalents(res, cfg)
        )

    return run


def run_tp_iterative(ctx: CellContext) -> MethodRun:
    """Torch-Pruning's own iterative pruner on the RL search's fine-tune schedule."""
    res = tp_iterative(
        ctx.model, ctx.data.train, ctx.cfg, ctx.target, ctx.ft_steps,
        hflip=ctx.data.hflip, device=ctx.device, progress=not ctx.quiet,
    )  # fmt: skip
    return MethodRun(res.model, res.kept, res.search_s, res.finetune_s)


def run_random_search(ctx: CellContext) -> MethodRun:
    """EagleEye with as many scored candidates as rl's search spent reward-set evaluations."""
    if ctx.rl_rollouts is None:
        raise ConfigError("random-search takes its candidate count from rl: run rl too")
    log.info(
        "random-search: %d candidates, the most reward-set evaluations an rl search of this cell"
        " spent", max(1, ctx.rl_rollouts),
    )  # fmt: skip
    res = random_search(
        ctx.model, ctx.data.train, ctx.data.val, ctx.cfg, ctx.target, ctx.ft_steps,
        max(1, ctx.rl_rollouts), hflip=ctx.data.hflip, device=ctx.device, progress=not ctx.quiet,
    )  # fmt: skip
    return MethodRun(res.model, res.kept, res.search_s, res.finetune_s, rollouts=res.candidates)


def heuristic_runner(method: str) -> Runner:
    """A :mod:`rlprune.baselines` method: one-shot prune of a copy, then the equal fine-tune."""

    def run(ctx: CellContext) -> MethodRun:
        data, cfg = ctx.data, ctx.cfg
        calib = data.train.subset(min(cfg.rollout.calib_set, len(data.train)), seed=cfg.seed + 1)
        model = ctx.baseline_copy()
        t0 = time.perf_counter()
        kept = prune_to_target(
            model,
            method,
            ctx.target,
            data.val.images[:1],
            calib=(calib.images, calib.labels),
            counts=ctx.rl_counts,
            seed=cfg.seed,
            min_keep=cfg.min_keep,
            exclude=cfg.exclude,
            round_to=cfg.round_to,
        )
        search_s = time.perf_counter() - t0
        return MethodRun(model, kept, search_s, equal_fine_tune(ctx, model, f"fine-tune {method}"))

    return run


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies the baseline checkpoint in cell files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _flat(d: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flat(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), d


# Search-config keys whose default changed after cells without them were written: such a cell
# ran with the value given here, not with today's default.
PREDATED_DEFAULTS: dict[str, Any] = {"config.joint.start_uniform": False}


def _first_difference(
    old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()
) -> str | None:
    """The first key whose value differs, or None. A search-config key the cell predates (a
    field added to the config since) does not count: the cell's method ran without it, unless
    the field's default has changed since (:data:`PREDATED_DEFAULTS`); nor do keys under the
    ``ignore`` prefixes (settings the method never reads). A change that alters a method's
    behaviour must be made under a new key, listed there, or the cells removed."""
    a, b = dict(_flat(old)), dict(_flat(new))
    a = {**{k: v for k, v in PREDATED_DEFAULTS.items() if k in b}, **a}
    for key in sorted(a.keys() | b.keys()):
        if (key not in a and key.startswith("config.")) or key.startswith(ignore):
            continue
        if a.get(key) != b.get(key):
            return (
                f"{key}: {a.get(key, '<missing>')!r} in the cell, {b.get(key, '<missing>')!r} now"
            )
    return None


RL_COUNT_READERS = ("random", "l1-rl-ratios")  # methods built from rl's per-unit keep counts


def unread_settings(method: str, fingerprint: dict[str, Any]) -> tuple[str, ...]:
    """Fingerprint key prefixes ``method``'s numbers do not depend on: the joint strategy's
    settings, for every method but a joint search and those built on one (``random-search``
    depends on the searches only through its candidate count, which its row records), and
    ``strategy`` for every method but ``rl`` and those built on its keep counts."""
    strategy = fingerprint.get("config", {}).get("strategy")
    # rl's strategy setting decides its search, and so the keep counts random and l1-rl-ratios
    # take from it; rl-joint and rl-layerwise name their own, the others read neither
    reads_rl = method in ("rl", *RL_COUNT_READERS)
    joint = method == "rl-joint" or (reads_rl and strategy != "layerwise")  # auto: joint
    ignored = () if reads_rl else ("config.strategy",)
    return ignored if joint else ("config.joint.", *ignored)


_NAME = re.compile(r"t(?P<target>[0-9.eE+-]+)_s(?P<seed>-?\d+)\.json")


class CellStore:
    """The cell files under ``OUT/cells``: one JSON file per (method, target, seed).

    Args:
        root: the ``cells`` folder.
        fingerprint: ``(target, seed) -> dict`` of everything a cell's numbers depend on.
    """

    def __init__(self, root: Path, fingerprint: Callable[[float, int], dict[str, Any]]) -> None:
        self.root = root
        self.fingerprint = fingerprint

    def path(self, method: str, target: float, seed: int) -> Path:
        return self.root / method / f"t{target:g}_s{seed}.json"

    def write(self, method: str, target: float, seed: int, row: dict[str, Any]) -> Path:
        cell = {
            "format": CELL_FORMAT,
            "version": CELL_VERSION,
            "method": method,
            "target": target,
            "seed": seed,
            "fingerprint": self.fingerprint(target, seed),
            "row": row,
        }
        text = json.dumps(cell, indent=2)
        return atomic_write(self.path(method, target, seed), lambda f: f.write(text), mode="w")

    def load(self, method: str, target: float, seed: int) -> dict[str, Any] | None:
        """The finished row of a cell, or ``None`` if it has not been measured yet.

        Raises:
            ConfigError: the cell was made with another config (checkpoint, data, settings).
        """
        path = self.path(method, target, seed)
        try:
            cell = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("cell %s is unreadable (%s): measuring it again", path, e)
            return None
        if not isinstance(cell, dict) or cell.get("format") != CELL_FORMAT:
            raise ConfigError(f"{path} is not an rlprune compare cell; move it out of {self.root}")
        new = self.fingerprint(target, seed)
        diff = _first_difference(cell.get("fingerprint", {}), new, unread_settings(method, new))
        if diff is not None:
            raise ConfigError(
                f"cell {path} was made with another config ({diff}); use another --out "
                f"or delete {self.root} to start over"
            )
        row: dict[str, Any] = cell["row"]
        return row

    def seeds(self, method: str, target: float) -> list[int]:
        """Seeds with a cell file for ``method`` and ``target`` (from any invocation), sorted."""
        found = set()
        for p in (self.root / method).glob(f"t{target:g}_s*.json"):
            m = _NAME.fullmatch(p.name)
            if m and m["target"] == f"{target:g}":
                found.add(int(m["seed"]))
        return sorted(found)

    def rows(self, method: str, target: float) -> list[dict[str, Any]]:
        """Every finished row of ``method`` at ``target``, by seed (each one checked)."""
        rows = [self.load(method, target, s) for s in self.seeds(method, target)]
        return [r for r in rows if r is not None]
