"""Heuristic filter pruners for the equal-cost comparison with the RL agent.

Every method prunes the units of :func:`~rlprune.pruning.find_units` physically with
:func:`~rlprune.pruning.remove_channels` (the classifier is never a unit, so it is never cut),
keeps at least ``min_keep`` channels per unit and returns the kept count per unit.

MAC-targeting methods (``target_macs`` is a fraction of the model's MACs):

- ``l1-uniform`` (Li et al. 2017): the same keep ratio ``r`` in every unit, smallest-L1
  filters removed; ``r`` is solved by bisection, then single channels are moved (from the unit
  with the highest keep ratio) if rounding left the MACs more than 1% off the target.
- ``global-magnitude``: torch-pruning's group L2 magnitude (``MagnitudeImportance(p=2)``,
  normalised by its mean within each unit, as torch-pruning's global pruning does) ranked
  across all units.
- ``taylor`` (Molchanov et al. 2019): torch-pruning's ``TaylorImportance`` after one backward
  pass on a calibration batch, normalised and ranked globally like ``global-magnitude``.
- ``bn-scale`` (Network Slimming, Liu et al. 2017): global ranking of ``|gamma|`` (mean over
  the BNs of a unit; units without a BN are left whole).

Global rankings remove channels from the least important up until the MACs reach the target; a
channel whose removal would overshoot the target by more than 1% is skipped so the final count
lands within 1% (the contract is +-2%, checked on an exact count of the pruned model).

Count-based methods (use the per-unit keep counts the RL agent chose; ``target_macs`` unused):

- ``random``: seeded random filters. ``l1-rl-ratios``: smallest-L1 filters removed, which
  separates the agent's allocation across units from its choice of filters.

MACs during the search come from :class:`UnitMacs`, a closed form of the model's MACs as a
function of the per-unit channel counts (each counted layer scales linearly in every unit it
touches; the touches are found by probing), exact for the zoo models, so bisection and
rankings cost microseconds per evaluation instead of a trace of a pruned copy; the pruned
model is then counted exactly by torch-pruning and checked against the target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from rlprune.config import PruneConfig
from rlprune.errors import ConfigError, PruningError
from rlprune.pruning import (
    Unit,
    UnitMacs,
    bn_scale,
    count_macs_params,
    filter_l1,
    find_units,
    group_magnitude,
    group_taylor,
    remove_channels,
    resolve_min_keep,
)
from rlprune.pruning.units import round_count

__all__ = ["BASELINES", "COUNT_BASED", "MAC_TARGETED", "Cost", "global_counts", "prune_to_target"]

log = logging.getLogger(__name__)

MAC_TARGETED: tuple[str, ...] = ("l1-uniform", "global-magnitude", "taylor", "bn-scale")
"""Methods that bring the model to ``target_macs`` themselves."""
COUNT_BASED: tuple[str, ...] = ("random", "l1-rl-ratios")
"""Methods that take the per-unit keep counts from elsewhere (the RL agent)."""
BASELINES: tuple[str, ...] = ("random", *MAC_TARGETED, "l1-rl-ratios")
"""Every heuristic method name accepted by :func:`prune_to_target`."""

TOLERANCE = 0.02  # final MACs within +-2% of the target (relative)
_AIM = 0.01  # what the search aims for, leaving margin


def _unit_scores(
    model: nn.Module,
    units: list[Unit],
    method: str,
    example_input: torch.Tensor,
    calib: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    """Per-channel importance ``[channels]`` of every unit (higher = more important)."""
    if method == "bn-scale":
        out: dict[str, torch.Tensor] = {}
        for u in units:
            score = bn_scale(model, u)
            if score is None:
                log.warning("bn-scale: unit %s has no BN scale; left whole", u.name)
                score = torch.full((u.channels,), math.inf)
            out[u.name] = score
        return out
    if method == "taylor":
        if calib is None:
            raise ConfigError("method 'taylor' needs a calibration batch: pass calib=(x, y)")
        return group_taylor(model, units, example_input, calib)
    return group_magnitude(model, units, example_input)


def _lowest_l1(model: nn.Module, unit: Unit, keep: int) -> torch.Tensor:
    mask = torch.zeros(unit.channels)
    mask[torch.topk(filter_l1(model, unit), keep).indices] = 1
    return mask


def _adjust(
    mac: UnitMacs,
    counts: dict[str, int],
    need: dict[str, int],
    goal: float,
    pick: Callable[[dict[str, int]], list[str]],
) -> None:
    """Remove single channels (units in ``pick``'s order) until MACs <= ``goal``, in place.

    A removal that would land more than ``_AIM`` below ``goal`` is skipped in favour of the
    next unit; stops when no unit can give a channel.
    """
    lo = goal * (1 - _AIM)
    while mac(counts) > goal:
        for name in pick(counts):
            if counts[name] <= need[name]:
                continue
            counts[name] -= 1
            if mac(counts) >= lo:
                break
            counts[name] += 1
        else:
            return


def _uniform_counts(
    mac: UnitMacs, units: list[Unit], need: dict[str, int], goal: float, round_to: int = 1
) -> dict[str, int]:
    """Counts ``round(r * C)`` (to a multiple of ``round_to``) with ``r`` bisected so MACs
    first reach ``goal``, then trimmed (one channel at a time: ``round_to=1`` only)."""

    def counts_at(r: float) -> dict[str, int]:
        return {
            u.name: round_count(
                max(need[u.name], min(u.channels, math.floor(r * u.channels + 0.5))),
                u.channels, round_to, need[u.name],
            )
            for u in units
        }  # fmt: skip

    lo, hi = 0.0, 1.0
    for _ in range(40):  # smallest r with MACs >= goal (MACs are non-decreasing in r)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mac(counts_at(mid)) < goal else (lo, mid)
    above, below = counts_at(hi), counts_at(lo)
    best = min((above, below), key=lambda c: abs(mac(c) - goal))
    if abs(mac(best) / goal - 1) <= _AIM or round_to > 1:
        return best
    depth = {u.name: u.depth for u in units}
    ch = {u.name: u.channels for u in units}
    _adjust(mac, above, need, goal, lambda c: sorted(c, key=lambda n: (-c[n] / ch[n], depth[n])))
    return above


Cost = Callable[[dict[str, int]], float]
"""A model cost as a function of the per-unit kept counts: :class:`UnitMacs`, or a
:class:`~rlprune.pruning.latency.LatencyModel` (predicted ms)."""


def global_counts(
    cost: Cost,
    units: list[Unit],
    scores: dict[str, torch.Tensor],
    goal: float,
    *,
    min_keep: float = PruneConfig.min_keep,
    round_to: int = 1,
) -> dict[str, int]:
    """Kept count per unit when channels ``scores[unit] [C_u]`` (higher = more important) are
    removed in ascending global order until ``cost(counts)`` reaches ``goal``: global ranking
    under any cost, e.g. a latency budget priced by a latency table. The counts only; nothing
    is cut. A removal that would land more than 1% below ``goal`` is skipped (``round_to=1``),
    so the result can stay above ``goal`` where every step is that coarse: check it."""
    need = {u.name: resolve_min_keep(min_keep, u.channels) for u in units}
    masks = _global_masks(cost, units, need, goal, scores, round_to)
    return {name: int(m.sum()) for name, m in masks.items()}


def _global_masks(
    mac: Cost,
    units: list[Unit],
    need: dict[str, int],
    goal: float,
    scores: dict[str, torch.Tensor],
    round_to: int = 1,
) -> dict[str, torch.Tensor]:
    """Remove channels in ascending global score order until the cost ``mac`` (MACs or
    predicted latency) reaches ``goal``; with ``round_to > 1`` a unit's turn removes a block (its
    lowest-scored channels) that brings it to the next lower multiple of ``round_to``."""
    ranking = sorted(
        (float(s), u.depth, i, u.name)
        for u in units
        for i, s in enumerate(scores[u.name].tolist())
        if math.isfinite(s)
    )
    counts = {u.name: u.channels for u in units}
    masks = {u.name: torch.ones(u.channels) for u in units}
    lo, cur = goal * (1 - _AIM), mac(counts)
    for _, _, idx, name in ranking:
        if cur <= goal:
            break
        if masks[name][idx] == 0:  # gone with an earlier block
            continue
        step = counts[name] % round_to or round_to
        if counts[name] - step < need[name]:
            continue
        counts[name] -= step
        new = mac(counts)
        if new < lo and round_to == 1:  # this channel's step is too coarse here: try cheaper ones
            counts[name] += step
            continue
        alive = torch.nonzero(masks[name]).flatten()
        block = alive[torch.argsort(scores[name][alive])[:step]] if step > 1 else [idx]
        masks[name][block] = 0
        cur = new
    return masks


def _check_counts(units: list[Unit], counts: dict[str, int], need: dict[str, int]) -> None:
    names = {u.name: u for u in units}
    for name, n in counts.items():
        if name not in names:
            raise ConfigError(f"counts name unknown unit {name!r}; units: {', '.join(names)}")
        if not 1 <= int(n) <= names[name].channels:
            raise ConfigError(f"count {n} for {name} is outside 1..{names[name].channels}")
        if int(n) < need[name]:
            log.warning(
                "%s: count %d is below min_keep (%d); keeping %d", name, n, need[name], need[name]
            )


def prune_to_target(
    model: nn.Module,
    method: str,
    target_macs: float,
    example_input: torch.Tensor,
    *,
    calib: tuple[torch.Tensor, torch.Tensor] | None = None,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    min_keep: float = PruneConfig.min_keep,
    exclude: Iterable[str] = (),
    round_to: int = 1,
) -> dict[str, int]:
    """Prune ``model`` in place with a heuristic ``method``.

    Args:
        model: the trained network; modified in place (left in eval mode).
        method: one of :data:`BASELINES`.
        target_macs: fraction of the model's current MACs to reach (MAC-targeting methods).
        example_input: ``[1, C, H, W]`` for tracing and MAC counting.
        calib: ``(images, labels)`` batch for ``taylor``'s gradients.
        counts: per-unit keep counts (``random``, ``l1-rl-ratios``); units not named stay whole.
        seed: seed of ``random``'s choice of filters.
        min_keep: channels every unit keeps (count if >= 1, else fraction).
        exclude: module names never pruned (besides the classifier).
        round_to: kept counts on multiples of it (or whole, ``round_count``); MAC targets are
            then met within the rounding's granularity, not 2%.

    Returns:
        Kept channel count per unit name (every unit of the model).

    Raises:
        ConfigError: unknown method, missing ``counts``/``calib``, or a target outside (0, 1].
        PruningError: the final MACs miss a MAC target by more than 2% (e.g. min_keep forbids it).
    """
    if method not in BASELINES:
        raise ConfigError(f"unknown pruning method {method!r}; valid: {', '.join(BASELINES)}")
    if method in COUNT_BASED and counts is None:
        raise ConfigError(f"method {method!r} needs per-unit keep counts (counts=...)")
    if method in MAC_TARGETED and not 0 < target_macs <= 1:
        raise ConfigError(f"target_macs must be in (0, 1], got {target_macs}")
    model.eval()
    units = find_units(model, example_input, exclude)
    need = {u.name: resolve_min_keep(min_keep, u.channels) for u in units}
    masks: dict[str, torch.Tensor] = {}
    if method in COUNT_BASED:
        assert counts is not None
        _check_counts(units, counts, need)
        gen = torch.Generator().manual_seed(seed)
        for u in units:
            keep = max(need[u.name], int(counts.get(u.name, u.channels)))
            keep = round_count(keep, u.channels, round_to, need[u.name])
            if method == "random":
                masks[u.name] = torch.zeros(u.channels)
                masks[u.name][torch.randperm(u.channels, generator=gen)[:keep]] = 1
            else:
                masks[u.name] = _lowest_l1(model, u, keep)
    else:
        mac = UnitMacs(model, units, example_input)
        goal = target_macs * mac.total
        if method == "l1-uniform":
            kept = _uniform_counts(mac, units, need, goal, round_to)
            masks = {u.name: _lowest_l1(model, u, kept[u.name]) for u in units}
        else:
            scores = _unit_scores(model, units, method, example_input, calib)
            masks = _global_masks(mac, units, need, goal, scores, round_to)
    result: dict[str, int] = {}
    base_macs = count_macs_params(model, example_input)[0]
    for u in units:  # units are disjoint: cutting one never renumbers another's channels
        result[u.name] = len(remove_channels(model, u, masks[u.name], example_input, min_keep))
    model.eval()
    macs = count_macs_params(model, example_input)[0]
    off = abs(macs / base_macs / target_macs - 1) > TOLERANCE
    if method in MAC_TARGETED and off and round_to == 1:
        raise PruningError(
            f"{method}: reached {macs / base_macs:.3f} of the MACs, not {target_macs:.3f} "
            f"(+-{TOLERANCE:.0%}); min_keep={min_keep} may forbid the target"
        )
    log.info("%s: MACs %.1f%% of the model", method, 100 * macs / base_macs)
    return result
