"""Where a search runs: its run folder, its resume state and its processes.

The walk calls one :class:`SearchRuntime`; it never touches files, ``torch.distributed`` or
DDP itself. Under torchrun every rank holds the same state and takes the same decisions; rank 0
alone writes (followers get a :class:`~rlprune.distributed.FollowerRunDir`), and fine-tuning
runs under DDP with each rank on its stride of the training split.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rlprune.agent import Agent
from rlprune.checkpoint import apply_shapes, capture_shapes, check_shrinks
from rlprune.config import PruneConfig
from rlprune.data import Split
from rlprune.distributed import DistContext, FollowerRunDir, shard_split
from rlprune.errors import CheckpointError
from rlprune.outputs import Measurement
from rlprune.runfolder import RunIdentity, config_hash, tensors_fingerprint
from rlprune.runstate import RunDir
from rlprune.search.records import UnitProgress, UnitRecord
from rlprune.train import fine_tune

__all__ = ["SearchRuntime", "derive_seed"]

log = logging.getLogger(__name__)


def derive_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (FNV-1a), the same on resume as in an
    uninterrupted run, so each (unit, update) draws from its own generator stream."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


@dataclass
class SearchRuntime:
    """The run folder, resume state, torchrun context and fine-tuning of one search."""

    run: RunDir
    dist: DistContext
    cfg: PruneConfig
    device: torch.device | str
    train: Split  # this rank's share of the fine-tuning data
    train_size: int  # images in the whole fine-tuning split (all ranks)
    hflip: bool
    progress: bool

    @classmethod
    def open(
        cls,
        out_dir: str | Path,
        cfg: PruneConfig,
        resume: bool,
        dist: DistContext,
        device: torch.device | str,
        train: Split,
        hflip: bool,
        progress: bool,
        inputs: tuple[nn.Module, Sequence[Split | None]] | None = None,
        overwrite: bool = False,
    ) -> SearchRuntime:
        """Create (or, with ``resume``, check and reopen) the run folder.

        ``inputs``: the model to prune and the dataset's splits, fingerprinted into the run's
        identity so that ``resume`` refuses a folder made from other inputs.
        """
        run = RunDir(out_dir) if dist.is_main else FollowerRunDir(out_dir)
        if dist.is_main:
            resume = run.claim(identity(cfg, inputs), resume, overwrite)
        cfg = run.start(cfg, resume)
        dist.barrier()  # followers read the folder rank 0 has just created
        return cls(run, dist, cfg, device, shard_split(train, dist), len(train), hflip, progress)

    # ----------------------------------------------------------------- fine-tuning
    def tune(self, model: nn.Module, seed: int, steps: int, desc: str) -> dict[str, float]:
        """Fine-tune ``model`` in place; under torchrun with DDP, batch / world size per rank."""
        net: nn.Module = model
        if self.dist.active:
            dev = self.device
            ids = [dev.index] if isinstance(dev, torch.device) and dev.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
        cfg = self.cfg
        out = fine_tune(
            net,
            self.train,
            steps,
            cfg.finetune_lr,
            batch_size=max(1, cfg.batch_size // self.dist.world_size),
            weight_decay=cfg.weight_decay,
            hflip=self.hflip,
            generator=torch.Generator().manual_seed(seed),
            device=self.device,
            progress=self.progress and self.dist.is_main,
            desc=desc,
        )
        self.dist.sync_module(model)
        return out

    # ----------------------------------------------------------------- stored state
    def baseline(self, measure: Callable[[], Measurement]) -> Measurement:
        """The baseline's measurements: measured once, stored, reused on resume."""
        stored = self.run.read_json("state/baseline.json")
        if stored is not None:
            return Measurement.from_dict(stored)
        m = measure()
        self.run.write_json("state/baseline.json", m.to_dict())
        return m

    def load_walk(self, model: nn.Module, agent: Agent) -> list[UnitRecord]:
        """Restore ``model`` and ``agent`` as they were after the last finished unit; returns
        the records of the finished units (none on a fresh run)."""
        saved = self.run.load_state("model.pt", lambda s: _fits_walk(model, agent, s))
        if saved is None:
            return []
        apply_shapes(model, saved["shapes"])  # keeps the model's layout
        model.load_state_dict(saved["state_dict"])
        model.eval()
        agent.load_state_dict(saved["agent"])
        records = [UnitRecord.from_dict(r) for r in saved["records"]]
        log.info("resumed after %d units", len(records))
        return records

    def save_walk(self, model: nn.Module, records: list[UnitRecord], agent: Agent) -> None:
        """Checkpoint the walk after a finished unit."""
        state = {
            "shapes": capture_shapes(model),
            "state_dict": model.state_dict(),
            "records": [r.to_dict() for r in records],
            "agent": agent.state_dict(),
        }
        self.run.save_state("model.pt", state)

    def load_unit(self, unit: str, agent: Agent) -> UnitProgress | None:
        """The agent's progress inside ``unit`` if a killed run left one (restores ``agent``)."""
        inside = self.run.load_state("agent.pt", lambda s: _fits_agent(agent, s))
        if inside is None or inside.get("unit") != unit:
            return None
        agent.load_state_dict(inside["agent"])
        progress = UnitProgress.from_state(inside["progress"])
        log.info("%s: resumed agent training at update %d", unit, progress.update)
        return progress

    def save_unit(self, unit: str, progress: UnitProgress, agent: Agent) -> None:
        """Checkpoint the agent's progress inside ``unit`` (after every policy update)."""
        state = {"unit": unit, "progress": progress.to_state(), "agent": agent.state_dict()}
        self.run.save_state("agent.pt", state)

    def final_steps(self) -> int:
        """SGD steps of the final fine-tune, counted on the whole split: under torchrun each
        rank takes as many steps, on its share with batch / world size."""
        return self.cfg.final_steps(self.train_size)

    def final_tune(self, model: nn.Module, seed: int, steps: int) -> float:
        """The final fine-tune, done once (a resumed run loads its result); returns its smoothed
        final loss (NaN when loaded)."""
        final = self.run.load_state("final.pt", lambda s: _fits_model(model, s))
        loss = float("nan")
        if final is not None:
            model.load_state_dict(final["state_dict"])
        else:
            loss = self.tune(model, seed, steps, "final fine-tune")["loss"]
            self.run.save_state("final.pt", {"state_dict": model.state_dict()})
        model.eval()
        return loss

    def log_metrics(self, record: dict[str, Any]) -> None:
        self.run.log_metrics(record)


def identity(
    cfg: PruneConfig, inputs: tuple[nn.Module, Sequence[Split | None]] | None
) -> RunIdentity:
    """The run's identity: config hash, input model and dataset fingerprints."""
    if inputs is None:
        return RunIdentity("prune", config_hash(cfg), None, None)
    model, splits = inputs
    named = [
        (f"{i}.{part}", t)
        for i, split in enumerate(splits)
        if split is not None
        for part, t in (("images", split.images), ("labels", split.labels))
    ]
    return RunIdentity(
        "prune",
        config_hash(cfg),
        tensors_fingerprint(model.state_dict().items()),
        tensors_fingerprint(named),
    )


def _fits_model(model: nn.Module, state: dict[str, Any]) -> None:
    """A state file's model fits ``model``: widths within its own (as a checkpoint's), then the
    tensors load into a copy; otherwise :class:`CheckpointError`."""
    probe = copy.deepcopy(model)
    try:
        if "shapes" in state:
            shapes = state["shapes"]
            if not isinstance(shapes, dict) or not all(
                isinstance(v, list) and all(type(x) is int for x in v) for v in shapes.values()
            ):
                raise CheckpointError("'shapes' must map layer names to lists of integers")
            check_shrinks(probe, shapes, "state")
            apply_shapes(probe, shapes)
            for r in state["records"]:
                UnitRecord.from_dict(r)
        probe.load_state_dict(state["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{type(e).__name__}: {str(e).strip()[:120]}") from e


def _fits_walk(model: nn.Module, agent: Agent, state: dict[str, Any]) -> None:
    """A walk's state fits ``model`` and its agent state loads into a copy of ``agent`` (a run
    started under another strategy, e.g. ``auto`` resolved otherwise by an older version, holds
    another agent's state)."""
    _fits_model(model, state)
    try:
        copy.deepcopy(agent).load_state_dict(state["agent"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"its agent is another search's: {str(e).strip()[:80]}") from e


def _fits_agent(agent: Agent, state: dict[str, Any]) -> None:
    """An agent state loads into a copy of ``agent`` without allocating beyond what the file
    holds (``in_dim`` sizes the policy a mismatch rebuilds)."""
    try:
        saved = state["agent"]
        stored = sum(t.numel() for t in saved["policy"].values() if isinstance(t, torch.Tensor))
        in_dim = saved["in_dim"]
        if type(in_dim) is not int or not 1 <= in_dim <= stored:
            raise CheckpointError(f"agent in_dim {str(in_dim)[:20]} does not fit its policy")
        copy.deepcopy(agent).load_state_dict(saved)
        UnitProgress.from_state(state["progress"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{type(e).__name__}: {str(e).strip()[:120]}") from e
