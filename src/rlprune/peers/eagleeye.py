"""``random-search``: EagleEye (Li et al., ECCV 2020), random allocations scored by adaptive BN.

EagleEye samples per-layer pruning ratios uniformly at random, keeps the candidates that meet
the constraint, removes the smallest-L1 filters of every layer, re-estimates the BN statistics
of each candidate on a few training batches ("adaptive BN": with the stale statistics a pruned
net's accuracy says little about how it fine-tunes) and fine-tunes only the best candidate.

Here a candidate draws a pruned fraction ``p_u ~ U(0, 1)`` per unit and, instead of rejection,
is scaled onto the MAC target: the unit keeps ``round(C_u * (1 - min(1, s * p_u)))`` channels
(at least ``min_keep``) with the common factor ``s`` bisected on :class:`UnitMacs`' closed form
(as :mod:`rlprune.baselines` does), then single channels are moved if rounding left the MACs
more than 1% off. Only the proportions of ``p`` matter after scaling, so EagleEye's upper bound
on the sampled ratio is not needed.

Scoring cuts a deep copy: the smallest-L1 filters of every unit are removed physically
(:func:`~rlprune.pruning.remove_channels`), every BN is re-estimated on the RL search's
calibration images (:func:`rlprune.bnadapt.adapted_bn`) and the accuracy is read on the RL
search's reward set (validation images). Measured on width-1 vgg-small / resnet20 at 28x28,
1000 reward + 256 calibration images, one thread: a candidate costs 1.0 / 1.3 s at a 0.5
target (0.6 / 1.1 s at 0.3) against 1.3 / 2.1 s with forward hooks masking the full-width net
(the copy and cut cost 0.04 / 0.16 s of that), and a cut is exactly what the final model is.
Candidates are cut on the CPU and scored on the fine-tuning device (a GPU scores one in
milliseconds; the 700-odd candidates of a resnet20 cell take 7 to 15 minutes of a CPU). The
winner (its copy, with its original BN statistics) gets the whole fine-tune budget in one
:func:`~rlprune.train.fine_tune` call, as the heuristics of ``rlprune compare`` do. The test
split is never an input.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import torch
from torch import nn

from rlprune.bnadapt import adapted_bn
from rlprune.config import PruneConfig
from rlprune.data import Split
from rlprune.errors import ConfigError, PruningError
from rlprune.models import set_layout
from rlprune.peers.common import TOLERANCE, RandomSearchResult, check_macs, check_target, tune
from rlprune.pruning import (
    Unit,
    UnitMacs,
    count_macs_params,
    filter_l1,
    find_units,
    remove_channels,
    resolve_min_keep,
)

__all__ = ["CandidateScorer", "random_search", "sample_fractions", "scale_to_target"]

log = logging.getLogger(__name__)

_AIM = 0.01  # candidates aim inside +-1% of the target (the contract is +-2%)


def scale_to_target(
    p: torch.Tensor, units: list[Unit], mac: UnitMacs, need: dict[str, int], goal: float
) -> dict[str, int]:
    """Kept channels per unit for pruned fractions ``p [U]`` scaled so the MACs reach ``goal``.

    ``s`` is bisected for the smallest common factor whose MACs are ``<= goal`` (MACs are
    non-increasing in ``s``); if neither side of the boundary is within 1% of ``goal``, single
    channels are removed from the side above it, first from the units whose count lies furthest
    above their scaled sample, skipping removals that would land more than 1% below ``goal``.
    """

    def counts_at(s: float) -> dict[str, int]:
        return {
            u.name: max(need[u.name], math.floor(u.channels * (1 - min(1.0, s * f)) + 0.5))
            for u, f in zip(units, p.tolist(), strict=True)
        }

    lo, hi = 0.0, 1.0 / max(float(p.min()), 1e-6)  # at hi every unit is at min_keep
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mac(counts_at(mid)) > goal else (lo, mid)
    above, below = counts_at(lo), counts_at(hi)
    best = min((above, below), key=lambda c: abs(mac(c) - goal))
    if abs(mac(best) / goal - 1) <= _AIM:
        return best
    want = {
        u.name: u.channels * (1 - min(1.0, hi * f)) for u, f in zip(units, p.tolist(), strict=True)
    }
    floor = goal * (1 - _AIM)
    while mac(above) > goal:
        for name in sorted(above, key=lambda n: want[n] - above[n]):
            if above[name] <= need[name]:
                continue
            above[name] -= 1
            if mac(above) >= floor:
                break
            above[name] += 1
        else:
            break  # no single removal lands inside the window: keep the closer side
    return min((above, below), key=lambda c: abs(mac(c) - goal))


class CandidateScorer:
    """Cuts candidates and scores them by adaptive-BN accuracy (EagleEye's proxy).

    Args:
        model: the network candidates are cut from (never modified).
        units: its units; a candidate is one ``[C_u]`` 0/1 keep mask per unit, in this order.
        reward: ``(x [N, C, H, W], y [N])`` validation images and labels.
        calib_x: ``[M, C, H, W]`` training images the BN statistics are re-estimated on.
        batch_size: forward batch size.
        min_keep: :func:`~rlprune.pruning.remove_channels`' guard.
        device: where cut candidates are scored (``model`` stays where it is: cuts are traced
            with its first reward image).
    """

    def __init__(
        self,
        model: nn.Module,
        units: list[Unit],
        reward: tuple[torch.Tensor, torch.Tensor],
        calib_x: torch.Tensor,
        batch_size: int,
        min_keep: float,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model, self.units, self.device = model.eval(), units, device
        self.example = reward[0][:1]  # on the model's device, for tracing the cuts
        self.x, self.y = reward[0].to(device), reward[1].to(device)
        self.calib_x, self.bs, self.min_keep = calib_x.to(device), batch_size, min_keep

    def cut(self, masks: list[torch.Tensor]) -> nn.Module:
        """A deep copy with every unit cut to its mask (units are disjoint: names stay valid),
        moved to the scoring device."""
        net = copy.deepcopy(self.model)
        for u, m in zip(self.units, masks, strict=True):
            remove_channels(net, u, m, self.example, self.min_keep)
        return net.to(self.device).eval()

    @torch.inference_mode()
    def _correct(self, net: nn.Module, i: int) -> int:
        """Correct predictions of ``net`` on reward images ``i : i + batch_size``."""
        return int((net(self.x[i : i + self.bs]).argmax(1) == self.y[i : i + self.bs]).sum())

    def accuracy(self, net: nn.Module) -> float:
        """Top-1 accuracy (%) of a cut ``net`` on the reward set with every BN re-estimated on
        the calibration images; ``net``'s own statistics are restored afterwards."""
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]

        def calibrate() -> None:
            for i in range(0, len(self.calib_x), self.bs):
                net(self.calib_x[i : i + self.bs])

        with adapted_bn(bns, calibrate):
            correct = sum(self._correct(net, i) for i in range(0, len(self.y), self.bs))
        return 100.0 * correct / max(1, len(self.y))


def _masks(
    units: list[Unit], order: dict[str, torch.Tensor], counts: dict[str, int]
) -> list[torch.Tensor]:
    """One ``[C_u]`` mask per unit keeping its ``counts[u]`` largest-L1 filters."""
    out = []
    for u in units:
        m = torch.zeros(u.channels)
        m[order[u.name][: counts[u.name]]] = 1
        out.append(m)
    return out


def sample_fractions(gen: torch.Generator, n_units: int) -> torch.Tensor:
    """EagleEye's sampling: a pruned fraction per unit, uniform in [0, 1). Returns ``[U]``."""
    return torch.rand(n_units, generator=gen, dtype=torch.float64)


def _search(
    units: list[Unit],
    scorer: CandidateScorer,
    cfg: PruneConfig,
    target: float,
    n_candidates: int,
) -> tuple[nn.Module, float]:
    """Score ``n_candidates`` seeded random allocations; the best cut ``(net, reward acc)``
    (the first one on ties)."""
    net, example = scorer.model, scorer.example
    mac = UnitMacs(net, units, example)
    need = {u.name: resolve_min_keep(cfg.min_keep, u.channels) for u in units}
    goal = target * mac.total
    if mac(need) > goal * (1 + TOLERANCE):
        raise PruningError(
            f"random-search: min_keep={cfg.min_keep} leaves {mac(need) / mac.total:.3f} of the "
            f"MACs, above the target {target:.3f}"
        )
    # smallest-L1 filters go first (stable: ties keep the lower index)
    order = {u.name: torch.argsort(filter_l1(net, u), descending=True, stable=True) for u in units}
    gen = torch.Generator().manual_seed(cfg.seed)
    best: tuple[float, nn.Module | None] = (-math.inf, None)
    t0 = time.perf_counter()
    for i in range(n_candidates):
        counts = scale_to_target(sample_fractions(gen, len(units)), units, mac, need, goal)
        cand = scorer.cut(_masks(units, order, counts))
        acc = scorer.accuracy(cand)
        log.debug("candidate %d: MACs %.3f, reward acc %.2f%%", i, mac(counts) / mac.total, acc)
        if acc > best[0]:
            best = (acc, cand)
    dt = time.perf_counter() - t0
    msg = "random-search: %d candidates in %.1f s (%.3f s each), best reward acc %.2f%%"
    log.info(msg, n_candidates, dt, dt / max(1, n_candidates), best[0])
    assert best[1] is not None
    return best[1], best[0]


def random_search(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: PruneConfig,
    target_macs: float,
    ft_steps: int,
    n_candidates: int,
    *,
    hflip: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> RandomSearchResult:
    """EagleEye random search to ``target_macs``, then the equal fine-tune (module docstring).

    Args:
        model: the trained network (not modified).
        train: training split ``[N, C, H, W]``: calibration images (the RL search's subset,
            ``cfg.rollout.calib_set`` drawn with seed ``cfg.seed + 1``) and fine-tuning.
        val: validation split: the reward set (``cfg.rollout.reward_set`` images drawn with
            seed ``cfg.seed``, as the RL search draws it).
        cfg: ``seed, exclude, min_keep, rollout.*, finetune_lr, batch_size, weight_decay,
            channels_last``.
        target_macs: fraction of ``model``'s MACs to reach (+-2%).
        ft_steps: fine-tune steps for the winner (the comparison's equal budget).
        n_candidates: candidates to score (the RL search's scored rollouts, for equal cost).
        hflip: horizontal-flip augmentation while fine-tuning.
        device: where candidates are scored and the winner fine-tuned (cuts run on the CPU).
        progress: tqdm bar while fine-tuning.

    Raises:
        ConfigError: bad target or ``n_candidates < 1``.
        PruningError: the target is out of reach under ``min_keep``, or missed by more than 2%.
    """
    check_target(target_macs, ft_steps)
    if n_candidates < 1:
        raise ConfigError(f"n_candidates must be >= 1, got {n_candidates}")
    t0 = time.perf_counter()
    net = set_layout(copy.deepcopy(model).cpu().eval(), cfg.channels_last)
    reward = val.subset(min(cfg.rollout.reward_set, len(val)), seed=cfg.seed)
    calib = train.subset(min(cfg.rollout.calib_set, len(train)), seed=cfg.seed + 1)
    example = reward.images[:1]
    units = find_units(net, example, cfg.exclude)
    base_macs = count_macs_params(net, example)[0]
    scorer = CandidateScorer(
        net,
        units,
        (reward.images, reward.labels),
        calib.images,
        cfg.rollout.batch_size,
        cfg.min_keep,
        device,  # positional: keeps the call's shape for wrappers of __init__
    )
    pruned, acc = _search(units, scorer, cfg, target_macs, n_candidates)
    search_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(cfg.seed)
    done = tune(
        pruned,
        train,
        ft_steps,
        cfg,
        gen,
        hflip=hflip,
        device=device,
        progress=progress,
        desc="fine-tune random-search",
    )
    tune_s = time.perf_counter() - t0 - search_s
    pruned.cpu().eval()
    kept = {u.name: u.channels for u in find_units(pruned, example, cfg.exclude)}
    assert list(kept) == [u.name for u in units], "units renamed by pruning"
    macs_ratio = check_macs("random-search", pruned, example, base_macs, target_macs)
    return RandomSearchResult(pruned, kept, macs_ratio, search_s, tune_s, done, n_candidates, acc)
