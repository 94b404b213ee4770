"""What every search strategy shares: the live model, its environment and the runtime.

A strategy is a function ``(Session) -> list[UnitRecord]`` that prunes ``session.model`` in
place; :func:`rlprune.search.prune` builds the session, runs the strategy
``PruneConfig.search_strategy()`` resolves to (which owns the whole fine-tune schedule, final
epochs included), then measures and writes the outputs for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rlprune.config import PruneConfig
from rlprune.data import Split
from rlprune.env import PruningEnv
from rlprune.outputs import Measurement
from rlprune.search.records import UnitRecord
from rlprune.search.runtime import SearchRuntime

__all__ = ["COLLAPSE_DROP_PP", "FINAL_STREAM", "FINETUNE_STREAM", "Session", "Strategy"]

# Seed tags of the fine-tuning generator streams: derive_seed(seed, unit, FINETUNE_STREAM) and
# derive_seed(seed, FINAL_STREAM) never collide with the per-update sampling streams
# derive_seed(seed, unit, update), whose update index stays far below 2**20.
FINETUNE_STREAM = 1 << 20
FINAL_STREAM = 1 << 30

# A rollout this far (pp) below the unpruned reward-set accuracy has destroyed the network
# (10-class chance level is ~10 %): the unit is left whole instead.
COLLAPSE_DROP_PP = 50.0


@dataclass
class Session:
    """One search's shared objects.

    Attributes:
        model: the live model, pruned in place by the strategy.
        env: scores masks of a unit on the reward set and cuts them.
        runtime: run folder, resume state, torchrun and fine-tuning.
        cfg: the search config (as stored in the run folder).
        baseline: the unpruned model's measurements (``reward_set_acc`` set).
        val: the validation split (model selection; the test split is never here).
        example: ``[1, C, H, W]`` input for tracing and MAC counts.
    """

    model: nn.Module
    env: PruningEnv
    runtime: SearchRuntime
    cfg: PruneConfig
    baseline: Measurement
    val: Split
    example: torch.Tensor

    @property
    def base_acc(self) -> float:
        """Unpruned accuracy (%) on the reward set."""
        assert self.baseline.reward_set_acc is not None
        return self.baseline.reward_set_acc


Strategy = Callable[[Session], list[UnitRecord]]
