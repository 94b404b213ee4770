"""Scale-out on PyTorch's own engine: ``torchrun --nproc_per_node=N -m rlprune prune ...``.

What runs where (every rank must make the identical policy update, so nothing drifts):

* Every rank holds the same model, the same policy and the same seeded generators, so every
  rank samples the SAME K masks. Rank r scores masks ``r, r + N, r + 2N, ...``; a SUM
  all-reduce of a zero-filled ``[K]`` accuracy vector gives every rank all K accuracies
  (``8 K`` bytes per update on the wire), so every rank makes the identical policy update.
* Fine-tuning wraps the model in ``DistributedDataParallel``; each rank trains on its own
  stride of the training set (what ``DistributedSampler`` does) with ``batch / N`` images, so
  the global batch and step count match a 1-process run. Gradients are averaged by DDP
  (one all-reduce of all parameters per step).
* Rank 0 alone writes the run folder and logs at INFO; the others only read it (resume).

Backend: NCCL when CUDA is present, gloo on CPU. Multi-node works through torchrun's usual
rendezvous options (``--nnodes``, ``--rdzv-endpoint``); nothing here assumes one node.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rlprune.config import PruneConfig
from rlprune.data import Split
from rlprune.errors import RlpruneError
from rlprune.runstate import RunDir

__all__ = [
    "DistContext",
    "FollowerRunDir",
    "init_distributed",
    "launch_argv",
    "resolve_device",
    "shard_split",
]

log = logging.getLogger(__name__)


def launch_argv(nproc: int, argv: list[str]) -> list[str]:
    """Command line running ``python ARGV`` on ``nproc`` local processes (torchrun, loopback).

    ``nproc == 1`` runs the plain command; otherwise ``torch.distributed.run`` with a free
    port on 127.0.0.1 (what tests and bench/distributed.py launch).
    """
    if nproc == 1:
        return [sys.executable, *argv]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        *argv,
    ]


def resolve_device(name: str) -> torch.device:
    """``cpu | cuda[:i] | auto`` -> a device (auto: CUDA when present); chosen once, at the edge."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RlpruneError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job (``world_size == 1``: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def my_indices(self, k: int) -> list[int]:
        """The masks this rank scores: ``rank, rank + N, ...`` of ``k``."""
        return list(range(self.rank, k, self.world_size))

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce SUM (identity when single-process)."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sync_module(self, module: torch.nn.Module) -> None:
        """Broadcast rank 0's parameters AND buffers (DDP leaves each rank's BN running
        statistics from its own last sub-batch; every rank must score the same model)."""
        if self.active:
            with torch.no_grad():
                for t in module.state_dict().values():
                    dist.broadcast(t, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the torchrun job described by the environment, if any.

    Returns:
        ``(context, device)``; on CUDA each rank gets ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if rank != 0:  # rank 0 alone logs progress
        logging.getLogger("rlprune").setLevel(logging.WARNING)
    log.info("distributed: %d processes, backend %s", world, dist.get_backend())
    return DistContext(rank, world, local), device


def shard_split(split: Split, ctx: DistContext) -> Split:
    """This rank's stride of ``split`` (DistributedSampler's partition, without padding)."""
    if not ctx.active:
        return split
    return Split(split.images[ctx.rank :: ctx.world_size], split.labels[ctx.rank :: ctx.world_size])


class FollowerRunDir(RunDir):
    """A non-zero rank's view of the run folder: it reads state, never writes."""

    def start(self, cfg: PruneConfig, resume: bool) -> PruneConfig:
        return cfg

    def log_metrics(self, record: dict[str, Any]) -> None:
        pass

    def write_json(self, name: str, obj: Any) -> Path:
        return self.root / name

    def save_state(self, name: str, obj: dict[str, Any]) -> None:
        pass
