"""The environment: the one module that connects surgery (:mod:`rlprune.pruning`) with
decisions (:mod:`rlprune.agent`, :mod:`rlprune.reward`).

For the unit being explored it builds the policy's state, scores sampled masks on the reward
set (validation images only, never the test split) and turns accuracies and MACs into rewards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rlprune.agent import feature_state, unit_statistics, weight_state
from rlprune.config import PruneConfig
from rlprune.distributed import DistContext
from rlprune.models import set_layout
from rlprune.pruning import (
    MacModel,
    Unit,
    UnitMacs,
    find_units,
    remove_channels,
    resolve_min_keep,
)
from rlprune.pruning.latency import CostCurve, LatencyLUT, LatencyModel
from rlprune.pruning.units import round_count
from rlprune.reward import accuracy_reward, amc_reward, budget_reward
from rlprune.rollouts import PrefixScorer, Scorer, accuracy_stderr, make_scorer

__all__ = ["PruningEnv", "RolloutBatch", "unit_budget"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutBatch:
    """The outcome of scoring K masks: ``[K]`` tensors."""

    rewards: torch.Tensor
    accs: torch.Tensor
    macs: torch.Tensor
    kept: torch.Tensor


def unit_budget(
    macs: Callable[[dict[str, int]], float],
    units: list[Unit],
    remaining: list[Unit],
    target_macs: float,
    min_keep: float,
    iters: int = 30,
) -> float:
    """Keep ratio ``r`` such that cutting every remaining unit to ``r`` reaches ``target_macs``.

    ``macs`` is the cost model (:class:`UnitMacs`, or a latency model with a latency target).
    Spreads the remaining budget uniformly over the remaining units (bisection on the
    closed-form MACs ``macs`` of the model's ``units``, exact for the zoo); later units
    re-solve it from the model as it then is, so a unit that prunes more than its share leaves
    more room for the rest. Returns 0 if the target cannot be reached (min_keep then rules).
    """
    names = {u.name for u in remaining}

    def at(ratio: float) -> float:
        counts = {
            u.name: max(resolve_min_keep(min_keep, u.channels), round(ratio * u.channels))
            if u.name in names
            else u.channels
            for u in units
        }
        return macs(counts)

    lo, hi = 0.0, 1.0
    if at(lo) > target_macs:
        log.warning(
            "MAC target %.3g unreachable with min_keep; pruning as far as allowed", target_macs
        )
        return lo
    for _ in range(iters):
        mid = (lo + hi) / 2
        if at(mid) > target_macs:
            hi = mid
        else:
            lo = mid
    return lo


def _cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX); oneDNN emulates bf16
    on other AVX-512 CPUs, slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch without the probes
        return False


class PruningEnv:
    """One search's environment.

    Args:
        model: the live model (modified by :meth:`apply`).
        reward_set: ``(x [N, C, H, W], y [N])`` validation images the rewards are scored on.
        calib: ``(x, y)`` calibration batch for per-filter activation statistics.
        example_input: ``[1, C, H, W]``.
        cfg: the search config.
        base_acc: unpruned accuracy (%) on the reward set.
        base_macs: unpruned model MACs.
        dist_ctx: with several processes, each scores its share of the masks.
        lut: with ``reward.efficiency=latency``, the latency table of the unpruned model
            (:class:`~rlprune.pruning.latency.LatencyLUT`): masks are priced in predicted ms at
            ``reward.latency_batch`` instead of MACs, and the budget is ``target_latency`` of
            the full-width prediction.

    Attributes:
        scored: rollouts of the current unit run on the reward set.
        reused: rollouts of the current unit answered from the memo of masks already scored.
    """

    def __init__(
        self,
        model: nn.Module,
        reward_set: tuple[torch.Tensor, torch.Tensor],
        calib: tuple[torch.Tensor, torch.Tensor],
        example_input: torch.Tensor,
        cfg: PruneConfig,
        base_acc: float,
        base_macs: int,
        dist_ctx: DistContext | None = None,
        lut: LatencyLUT | None = None,
    ) -> None:
        self.model = model
        self.lut = lut
        latency = lut.model(cfg.reward.latency_batch) if lut is not None else None
        self.latency: LatencyModel | None = latency
        rc = cfg.reward
        # what masks are priced in (MACs or ms), the unpruned model's cost, the model budget
        self.base_cost = float(base_macs) if latency is None else latency.total
        self.target = (
            rc.target_latency if latency is not None else rc.target_macs
        ) * self.base_cost
        self.dist = dist_ctx or DistContext()
        self.reward_x, self.reward_y = reward_set
        self.calib = calib
        self.example = example_input
        self.cfg = cfg
        self.ref_acc = base_acc  # accuracy of the model as it enters the current unit
        self.base_macs = base_macs
        self.unit: Unit | None = None
        self._scorer: Scorer | None = None
        self.mac_model: MacModel | CostCurve | None = None  # the current unit's cost line
        self.budget: float = 0.0
        # Exact reuse: a mask's accuracy is a deterministic function of the mask, so a mask
        # sampled again (common once the policy sharpens) is looked up, not re-scored.
        self._memo: dict[bytes, float] = {}
        self.scored = 0  # rollouts run on the reward set for the current unit
        self.reused = 0  # rollouts answered from the memo
        self._bf16 = cfg.rollout.precision == "bf16"
        if self._bf16:
            if self.reward_x.device.type == "cpu" and not _cpu_has_bf16():
                log.warning("rollout.precision=bf16: no native bf16 on this CPU; expect it slower")
            log.info("rollouts run under bf16 autocast (not exact; chosen masks re-scored in fp32)")

    # ------------------------------------------------------------------ units and state
    def units(self) -> list[Unit]:
        """The prunable units of the model as it is now (forward order)."""
        return find_units(self.model, self.example, self.cfg.exclude)

    def begin(self, unit: Unit, order: list[str]) -> torch.Tensor:
        """Prepare to explore ``unit``; returns the policy state ``[C, D]``.

        Args:
            unit: a unit of the current model.
            order: names of all units in walk order (for the budget of the remaining ones).
        """
        self.end()
        self.unit = unit
        self._memo, self.scored, self.reused = {}, 0, 0
        self.model.eval()
        self._price(unit, order)
        self._scorer = make_scorer(
            self.model,
            unit,
            self.reward_x,
            self.reward_y,
            self.cfg.rollout.batch_size,
            self.cfg.rollout.fast,
            self.cfg.rollout.cache_mb,
            self.calib[0] if self.cfg.rollout.adapt_bn else None,
        )
        # Drops are measured against the model as it enters this unit (earlier cuts are already
        # fine-tuned in), scored the same way as the masks (incl. adaptive BN).
        self.ref_acc = self.accuracy(torch.ones(unit.channels))
        if self.cfg.agent.state == "weights":
            return weight_state(self.model, unit)
        stats = unit_statistics(self.model, unit, *self.calib)
        assert self.mac_model is not None
        return feature_state(stats, unit, len(order), self.mac_model.total / self.base_cost)

    def _price(self, unit: Unit, order: list[str]) -> None:
        """The unit's cost line (MACs or predicted ms against its kept channels, the other
        units as they are now) and, in budget modes, its share of the model budget."""
        if self.cfg.reward.mode == "accuracy" and self.latency is None:
            self.mac_model = MacModel.measure(self.model, unit, self.example)
            return
        units = self.units()
        counts = {u.name: u.channels for u in units}
        if self.latency is not None:
            cost: Callable[[dict[str, int]], float] = self.latency
            self.mac_model = self.latency.line(unit.name, counts)
        else:
            # One probe per unit serves both the budget and this unit's MAC line (exact when
            # the convs shared by two units are bias-free, as in the zoo; see UnitMacs).
            macs = UnitMacs(self.model, units, self.example)
            cost, self.mac_model = macs, macs.line(unit.name)
        if self.cfg.reward.mode == "accuracy":
            return
        current = {u.name: u for u in units}
        remaining = [current[n] for n in order[order.index(unit.name) :] if n in current]
        ratio = unit_budget(cost, units, remaining, self.target, self.cfg.min_keep)
        keep_n = max(
            resolve_min_keep(self.cfg.min_keep, unit.channels), round(ratio * unit.channels)
        )
        self.budget = float(self.mac_model.cost(keep_n, unit.channels))
        log.info("%s: budget keep ratio %.3f -> unit budget %.4g", unit.name, ratio, self.budget)

    def restore_counts(self, scored: int, reused: int) -> None:
        """Continue the current unit's rollout counts (a resumed run: counts survive a kill)."""
        self.scored, self.reused = scored, reused

    def end(self) -> None:
        """Release the current unit's hooks and cache."""
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    # ------------------------------------------------------------------ rollouts
    def _precision(self, exact: bool = False) -> contextlib.AbstractContextManager[None]:
        if exact or not self._bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.reward_x.device.type, dtype=torch.bfloat16)

    def accuracy(self, mask: torch.Tensor, exact: bool = False) -> float:
        """Reward-set accuracy (%) with ``mask`` on the current unit, in the rollout precision
        (``exact``: in fp32 whatever ``rollout.precision`` says)."""
        assert self._scorer is not None, "call begin() first"
        with self._precision(exact):
            return self._scorer.accuracy(mask)

    @property
    def reward_set_size(self) -> int:
        return self._scorer.n if self._scorer is not None else len(self.reward_y)

    def stderr(self, acc: float) -> float:
        """Standard error (pp) of an accuracy on the reward set: the noise the agent fights."""
        return accuracy_stderr(acc, self.reward_set_size)

    def score(self, masks: torch.Tensor, exact: bool = False) -> RolloutBatch:
        """Accuracy, MACs and reward of each mask in ``masks [K, C]``.

        ``exact``: score in fp32 whatever ``rollout.precision`` says, past the memo (which
        holds accuracies in the rollout precision).
        """
        assert self.unit is not None and self.mac_model is not None
        unit, rc = self.unit, self.cfg.reward
        kept = masks.sum(dim=1)
        scorer = self._scorer
        keys = [m.float().cpu().numpy().tobytes() for m in masks.detach()]  # exact, any values
        memo: dict[bytes, float] = {} if exact and self._bf16 else self._memo
        new: list[int] = []  # first occurrence of each mask not scored yet
        seen = set(memo)
        for i, k in enumerate(keys):
            if k not in seen:
                seen.add(k)
                new.append(i)
        # Every rank holds the same K masks and the same memo; each scores its share of the
        # new ones, a SUM all-reduce of the zero-filled vector hands all of them to every rank.
        mine = [new[j] for j in self.dist.my_indices(len(new))]
        fresh = torch.zeros(len(masks), dtype=torch.float64)
        if self.cfg.rollout.batched and isinstance(scorer, PrefixScorer) and len(mine) > 1:
            with self._precision(exact):
                fresh[mine] = scorer.accuracies(masks[mine])
        else:
            for i in mine:
                fresh[i] = self.accuracy(masks[i], exact)
        fresh = self.dist.sum(fresh)
        for i in new:
            memo[keys[i]] = float(fresh[i])
        accs = torch.tensor([memo[k] for k in keys], dtype=torch.float64)
        self.scored += len(new)
        self.reused += len(masks) - len(new)
        macs = self.mac_model.cost(kept, unit.channels)
        drop = self.ref_acc - accs
        if rc.mode == "accuracy":
            if rc.efficiency == "filters":
                rewards = accuracy_reward(drop, rc.b, kept, unit.channels)
            else:
                rewards = accuracy_reward(drop, rc.b, macs, self.mac_model.total)
        elif rc.mode == "budget":
            rewards = budget_reward(drop, macs, self.budget, rc.budget_penalty, rc.budget_under)
        else:
            rewards = amc_reward(accs, macs, self.budget, rc.budget_penalty)
        return RolloutBatch(rewards.float(), accs.float(), macs, kept)

    def project_to_budget(self, mask: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """The mask with the channel count closest to the unit's MAC budget (budget modes).

        Pruned filters with the highest keep probability come back first; kept filters with
        the lowest go first. ``probs [C]``; returns a new ``[C]`` 0/1 mask.
        """
        assert self.unit is not None and self.mac_model is not None
        c = self.unit.channels
        want = min(
            c, max(resolve_min_keep(self.cfg.min_keep, c), self.mac_model.count_for(self.budget, c))
        )
        return _to_count(mask, probs, want)

    def round_mask(self, mask: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """The mask with its kept count rounded to a multiple of ``round_to`` (never below
        ``min_keep``; see :func:`~rlprune.pruning.latency.round_count`), filters added back or
        dropped in policy order as in :meth:`project_to_budget`."""
        assert self.unit is not None
        c, need = self.unit.channels, resolve_min_keep(self.cfg.min_keep, self.unit.channels)
        want = round_count(max(int(mask.sum()), need), c, self.cfg.round_to, need)
        return _to_count(mask, probs, want)

    def apply(self, mask: torch.Tensor) -> list[int]:
        """Physically remove the current unit's channels where ``mask`` is 0."""
        assert self.unit is not None
        unit = self.unit
        self.end()
        kept = remove_channels(self.model, unit, mask, self.example, self.cfg.min_keep)
        set_layout(self.model, self.cfg.channels_last)  # the configured layout, whatever it was
        return kept


def _to_count(mask: torch.Tensor, probs: torch.Tensor, want: int) -> torch.Tensor:
    """``mask [C]`` with exactly ``want`` ones: pruned filters with the highest ``probs [C]``
    come back first, kept filters with the lowest go first. Returns a new 0/1 mask."""
    out = mask.detach().clone().float()
    have = int(out.sum())
    if have < want:
        cand = torch.nonzero(out == 0).flatten()
        out[cand[torch.argsort(probs[cand], descending=True)[: want - have]]] = 1
    elif have > want:
        cand = torch.nonzero(out == 1).flatten()
        out[cand[torch.argsort(probs[cand])[: have - want]]] = 0
    return out
