"""The joint environment: every unit masked at once (a DECORE-style search, Alwani et al.,
CVPR 2022).

A whole-network mask is a ``[N]`` 0/1 vector over the filters of all units, concatenated in
forward unit order. The environment scores K such masks in ONE batched forward pass over a
slice of the reward set (per-sample masks), prices them (the closed-form MAC model, or with a
latency budget the latency table's prediction, NetAdapt-style: Yang et al., ECCV 2018), trains
the network's weights under a sampled mask (so rewards are measured after the network adapts,
not before), and finally cuts the chosen masks physically.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlprune.agent import feature_state, unit_statistics
from rlprune.config import PruneConfig
from rlprune.env.allocation import Allocation, largest_shift
from rlprune.errors import ConfigError
from rlprune.models import set_layout, training_layout
from rlprune.pruning import Unit, UnitMacs, UnitMask, find_units, remove_channels, resolve_min_keep
from rlprune.pruning.latency import LatencyLUT, LatencyModel
from rlprune.pruning.units import round_count
from rlprune.reward import budget_reward

__all__ = ["Allocation", "JointBatch", "JointEnv", "hits", "largest_shift"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JointBatch:
    """The outcome of scoring K whole-network masks: ``[K]`` tensors."""

    rewards: torch.Tensor
    accs: torch.Tensor  # % on the scored slice of the reward set
    macs: torch.Tensor  # model MACs with each mask
    cost: torch.Tensor  # what the budget counts: ``macs`` itself, or predicted latency (ms)


class JointEnv:
    """Masks over every unit of ``model`` at once.

    Args:
        model: the live model (weights trained by :meth:`train_step`, cut by :meth:`apply`).
        reward_set: ``(x [R, C, H, W], y [R])`` validation images the rewards are scored on.
        calib: ``(x, y)`` training images for the per-filter statistics of the state.
        example_input: ``[1, C, H, W]``.
        cfg: the search config (``reward.target_macs`` or ``reward.target_latency`` is the whole
            network's budget).
        base_macs: unpruned model MACs.
        lut: with ``reward.efficiency=latency``, the latency table (the one the layer-wise walk
            prices with): masks are priced in predicted ms at ``reward.latency_batch`` and the
            budget is ``target_latency`` of the unpruned model's prediction.
    """

    def __init__(
        self,
        model: nn.Module,
        reward_set: tuple[torch.Tensor, torch.Tensor],
        calib: tuple[torch.Tensor, torch.Tensor],
        example_input: torch.Tensor,
        cfg: PruneConfig,
        base_macs: int,
        lut: LatencyLUT | None = None,
    ) -> None:
        self.model, self.cfg, self.example = model, cfg, example_input
        self.reward_x, self.reward_y = reward_set
        self.calib = calib
        self.units: list[Unit] = find_units(model, example_input, cfg.exclude)
        self.sizes = [u.channels for u in self.units]
        # unit index of every filter, [N]
        self.owner = torch.repeat_interleave(
            torch.arange(len(self.units)), torch.tensor(self.sizes)
        )
        self.mac_model = UnitMacs(model, self.units, example_input)
        if (lut is not None) != (cfg.reward.efficiency == "latency"):
            raise ConfigError("the joint search prices latency with a table: both or neither")
        self.latency: LatencyModel | None = None
        self.base_cost = float(base_macs)
        self.target = cfg.reward.target_macs * base_macs
        if lut is not None:
            self.latency = lut.model(cfg.reward.latency_batch)
            self.base_cost = self.latency.total
            self.target = cfg.reward.target_latency * self.base_cost
        self.min_keep = [resolve_min_keep(cfg.min_keep, c) for c in self.sizes]
        self._masks = [UnitMask(model, u) for u in self.units]
        self._cursor = 0

    @property
    def cost_model(self) -> Callable[[dict[str, int]], float]:
        """The budget's price of per-unit kept counts: the latency table's or the MAC model."""
        return self.mac_model if self.latency is None else self.latency

    @property
    def priced(self) -> Literal["MAC", "latency"]:
        """What log lines call the budget."""
        return "MAC" if self.latency is None else "latency"

    @property
    def n_filters(self) -> int:
        return int(sum(self.sizes))

    def state(self) -> torch.Tensor:
        """The policy's state ``[N, FEATURE_DIM]``: each unit's filter features (z-scored within
        the unit) and its context, stacked in unit order."""
        self.set_masks(None)
        rows = []
        for u in self.units:
            stats = unit_statistics(self.model, u, *self.calib)
            rows.append(feature_state(stats, u, len(self.units), 1.0))
        return torch.cat(rows)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[..., N]`` -> one ``[..., C_u]`` tensor per unit."""
        return list(torch.split(flat, self.sizes, dim=-1))

    def counts(self, masks: torch.Tensor) -> torch.Tensor:
        """Kept channels per unit, ``[K, N]`` -> ``[K, U]``."""
        return torch.stack([m.sum(-1) for m in self.split(masks.float())], dim=-1)

    def macs(self, masks: torch.Tensor) -> torch.Tensor:
        """Model MACs of each mask ``[K, N]`` -> ``[K]`` (float64; closed form, exact for the
        zoo). Counts below ``min_keep`` are priced at ``min_keep``: the cut keeps that many."""
        return self._priced(self.mac_model, masks)

    def cost(self, masks: torch.Tensor) -> torch.Tensor:
        """What the budget counts for each mask ``[K, N]`` -> ``[K]`` (float64), compared with
        :attr:`target`: MACs, or the latency table's prediction (ms; units outside the search
        at full width). Counts below ``min_keep`` are priced at ``min_keep``."""
        return self._priced(self.cost_model, masks)

    def _priced(
        self, price: Callable[[dict[str, int]], float], masks: torch.Tensor
    ) -> torch.Tensor:
        names, floor = [u.name for u in self.units], self.min_keep
        return torch.tensor(
            [
                price({n: max(int(k), low) for n, k, low in zip(names, c, floor, strict=True)})
                for c in self.counts(masks)
            ],
            dtype=torch.float64,
        )

    def set_masks(self, masks: torch.Tensor | None) -> None:
        """Install ``[N]`` (whole batch) or ``[B, N]`` (per sample) masks; None removes them."""
        for hook, part in zip(
            self._masks,
            self.split(masks) if masks is not None else [None] * len(self._masks),
            strict=True,
        ):
            hook.set(part)

    def next_slice(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``joint.images`` images of the reward set (round robin)."""
        n, bs = len(self.reward_y), min(self.cfg.joint.images, len(self.reward_y))
        idx = (torch.arange(bs) + self._cursor) % n
        self._cursor = int((self._cursor + bs) % n)
        return self.reward_x[idx], self.reward_y[idx]

    @torch.no_grad()
    def score(self, masks: torch.Tensor) -> JointBatch:
        """Accuracy, cost and budget reward of each whole-network mask ``[K, N]`` on the next
        slice of the reward set, all K in one forward pass (per-sample masks)."""
        x, y = self.next_slice()
        k, b = masks.shape[0], len(y)
        self.model.eval()
        self.set_masks(masks.repeat_interleave(b, dim=0))
        try:
            logits = self.model(x.repeat(k, *([1] * (x.dim() - 1))))
        finally:
            self.set_masks(None)
        correct = (logits.argmax(1) == y.repeat(k)).view(k, b).double()
        accs = 100.0 * correct.mean(1)
        if self.cfg.joint.signal == "loss":
            # 100 x cross-entropy: on 100 images the accuracies of K masks differ mostly by a
            # few flipped predictions, their losses by how sure every prediction is
            ce = F.cross_entropy(logits.double(), y.repeat(k), reduction="none").view(k, b)
            drop = 100.0 * ce.mean(1)
        else:
            drop = 100.0 - accs
        return self._batch(drop, accs, masks)

    def _batch(self, drop: torch.Tensor, accs: torch.Tensor, masks: torch.Tensor) -> JointBatch:
        """Budget rewards of masks ``[K, N]`` from their drops and accuracies ``[K]``."""
        macs = self.macs(masks)  # on the CPU, like the agent that reads the rewards
        cost = macs if self.latency is None else self.cost(masks)
        drop, accs = drop.cpu(), accs.cpu()  # scored where the model is (a GPU)
        rc = self.cfg.reward
        rewards = budget_reward(drop, cost, self.target, rc.budget_penalty, rc.budget_under)
        return JointBatch(rewards.float(), accs.float(), macs, cost)

    @torch.no_grad()
    def score_full(
        self, mask: torch.Tensor, images: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> JointBatch:
        """Accuracy, cost and reward of one mask ``[N]`` on the whole reward set (or on
        ``images``: ``(x [M, C, H, W], y [M])``)."""
        hits = self.correct(mask, images)
        accs = torch.tensor([100.0 * float(hits.double().mean())], dtype=torch.float64)
        return self._batch(100.0 - accs, accs, mask[None])

    @torch.no_grad()
    def correct(
        self, mask: torch.Tensor, images: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Which images ``[M]`` (bool) the network under ``mask [N]`` classifies right (the
        reward set, or ``images``)."""
        self.model.eval()
        self.set_masks(mask)
        try:
            images = images if images is not None else (self.reward_x, self.reward_y)
            return hits(self.model, images, self.cfg.rollout.batch_size)
        finally:
            self.set_masks(None)

    def train_step(
        self, mask: torch.Tensor, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer
    ) -> float:
        """One SGD step of the network's weights under ``mask [N]``; returns the loss.

        A masked channel's BN sees an all-zero batch, whose statistics would drag its running
        variance towards 0; the next mask that keeps the channel would then divide by ~0 in
        eval mode. So the running statistics of masked channels are left as they were.
        """
        frozen = self._masked_bn_stats(mask)
        dev = next(self.model.parameters()).device  # the training split stays on the CPU
        self.model.train()
        self.set_masks(mask)
        try:
            with training_layout(self.model):
                loss = F.cross_entropy(self.model(x.to(dev)), y.to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            self.set_masks(None)
            self.model.eval()
            with torch.no_grad():
                for bn, drop, mean, var in frozen:
                    bn.running_mean[drop] = mean  # type: ignore[index]
                    bn.running_var[drop] = var  # type: ignore[index]
        return float(loss.detach())

    def _masked_bn_stats(
        self, mask: torch.Tensor
    ) -> list[tuple[nn.BatchNorm2d, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(bn, masked channels, their running mean, their running var)`` for every BN
        among the units' producers."""
        mods = dict(self.model.named_modules())
        out = []
        for unit, part in zip(self.units, self.split(mask), strict=True):
            for name in unit.producers:
                bn = mods[name]
                if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None:
                    assert bn.running_var is not None
                    # the BN's own channel numbers (a BN over a concat sees its slice)
                    local, owner = unit.index(name)
                    drop = [c for c, u in zip(local, owner, strict=True) if part[u] == 0]
                    idx = torch.tensor(drop, dtype=torch.long, device=bn.running_mean.device)
                    out.append((bn, idx, bn.running_mean[idx].clone(), bn.running_var[idx].clone()))
        return out

    def project(self, logits: torch.Tensor, iters: int = 60) -> torch.Tensor:
        """The deterministic mask ``[N]`` that lands on the target (:meth:`cost`): a common
        shift ``d`` of all logits sets each unit's count to ``round(sum_i sigmoid(logit_i + d))``
        (its expected count, rounded to a multiple of ``round_to``), solved by bisection; each
        unit keeps its highest-logit filters."""
        parts = self.split(logits.detach().float())

        def at(shift: float) -> torch.Tensor:
            out = []
            for part, low in zip(parts, self.min_keep, strict=True):
                n = max(low, min(part.numel(), round(float(torch.sigmoid(part + shift).sum()))))
                n = round_count(n, part.numel(), self.cfg.round_to, low)
                keep = torch.zeros_like(part)
                keep[torch.topk(part, n).indices] = 1.0
                out.append(keep)
            return torch.cat(out)

        lowest = at(-30.0)
        if float(self.cost(lowest[None])[0]) > self.target:
            log.warning("%s target %.3g unreachable with min_keep", self.priced, self.target)
            return lowest
        return at(
            largest_shift(lambda d: float(self.cost(at(d)[None])[0]) <= self.target, iters=iters)
        )

    def apply(self, mask: torch.Tensor) -> dict[str, list[int]]:
        """Remove the hooks and cut every unit physically where ``mask [N]`` is 0; returns the
        kept indices per unit."""
        self.close()
        return _cut(self.model, self.units, self.split(mask), self.example, self.cfg)

    def cut_copy(self, mask: torch.Tensor, weights: dict[str, torch.Tensor]) -> nn.Module:
        """A physically cut copy of the model with ``weights`` (a state dict of the uncut
        model), cut where ``mask [N]`` is 0; the live model and its hooks are left as they are.
        Training the copy costs what the pruned network costs, not the full width's masked
        compute."""
        self.close()  # hooks would be copied with the model (and the environment with them)
        try:
            model = copy.deepcopy(self.model)
        finally:
            self._masks = [UnitMask(self.model, u) for u in self.units]
        model.load_state_dict(weights)
        _cut(model, self.units, self.split(mask), self.example, self.cfg)
        return model

    def close(self) -> None:
        """Remove the mask hooks; the model is exactly as before."""
        for hook in self._masks:
            hook.remove()
        self._masks = []


def initial_levels(
    env: JointEnv,
    state_logits: torch.Tensor,
    ratios: list[float] | None = None,
    iters: int = 40,
) -> torch.Tensor:
    """Per-unit logit offsets ``[U]`` that start each unit's expected keep ratio at
    ``ratios``; by default at the uniform allocation, every unit's ratio equal and the expected
    cost (:meth:`JointEnv.cost`) on the target (the point uniform L1 pruning, Li et al. 2017,
    would pick). Learning then moves units away from it."""
    parts = env.split(state_logits.detach().float())
    names = [u.name for u in env.units]

    def offsets(unit_ratios: list[float]) -> torch.Tensor:
        out = []
        for part, ratio in zip(parts, unit_ratios, strict=True):
            r = min(max(ratio, 1e-4), 1 - 1e-4)
            lo, hi = -30.0, 30.0  # shift so that mean(sigmoid(part + s)) = r
            for _ in range(iters):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if float(torch.sigmoid(part + mid).mean()) < r else (lo, mid)
            out.append((lo + hi) / 2)
        return torch.tensor(out)

    if ratios is not None:
        return offsets(ratios)

    def cost_at(ratio: float) -> float:
        counts = {n: max(1, round(ratio * c)) for n, c in zip(names, env.sizes, strict=True)}
        return env.cost_model(counts)

    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost_at(mid) < env.target else (lo, mid)
    if math.isclose(lo, 0.0):
        log.warning(
            "%s target %.3g is below what one channel per unit costs", env.priced, env.target
        )
    return offsets([(lo + hi) / 2] * len(parts))


@torch.no_grad()
def hits(model: nn.Module, images: tuple[torch.Tensor, torch.Tensor], bs: int) -> torch.Tensor:
    """Which images ``(x [M, C, H, W], y [M])`` ``model`` classifies right, ``[M]`` bool, in
    batches of ``bs``."""
    pairs = zip(images[0].split(bs), images[1].split(bs), strict=True)
    return torch.cat([model(x).argmax(1) == y for x, y in pairs])


def _cut(
    model: nn.Module,
    units: list[Unit],
    parts: list[torch.Tensor],
    example: torch.Tensor,
    cfg: PruneConfig,
) -> dict[str, list[int]]:
    """Cut each unit of ``model`` where its mask ``parts[u] [C_u]`` is 0 (units found anew
    after every cut, since cutting renumbers the neighbours); the kept indices per unit."""
    kept: dict[str, list[int]] = {}
    for unit, part in zip(units, parts, strict=True):
        now = {u.name: u for u in find_units(model, example, cfg.exclude)}
        kept[unit.name] = remove_channels(model, now[unit.name], part, example, cfg.min_keep)
    set_layout(model, cfg.channels_last)
    return kept
