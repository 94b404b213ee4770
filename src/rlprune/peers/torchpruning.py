"""``tp-iterative``: Torch-Pruning's own iterative pruner (DepGraph, Fang et al. CVPR 2023).

The library's method as the library ships it, not a re-implementation: ``tp.pruner.BasePruner``
with group L2 magnitude importance (``GroupMagnitudeImportance(p=2)``), local (uniform) ranking
(``global_pruning=False``), roots restricted to the convs that are rlprune units (the classifier
and any excluded unit in ``ignored_layers``) and ``iterative_steps = n_units``, so it prunes in
as many rounds as the RL search decides units. Its linear schedule removes channels in equal
slices: after step ``k`` of ``n`` a unit keeps ``int(C * (1 - k / n * ratio))`` channels.

The uniform ``ratio`` is solved by bisection on dry runs (deep copies pruned through all steps,
counted exactly by :func:`~rlprune.pruning.count_macs_params`). The channel COUNTS a run reaches
depend only on the ratios (local ranking fixes how many channels each step removes; importance
only decides which), so the dry runs predict the real run exactly even though fine-tuning
between the real steps changes the weights; runs with the same count schedule are memoised.

Small widths: when every unit's channel count is a multiple of the smallest, all counts jump at
the same ratios and no uniform ratio may land within 2% (width-0.25 vgg-small at a 0.5 target:
0.576 or 0.473). Then the units take the two ratios bracketing the target, the first ``j`` units
the higher one (``j`` bisected), through the pruner's own ``pruning_ratio_dict``: the smallest
departure from uniform that meets the MAC contract. The result reports the ratio per unit.

``min_keep``: torch-pruning has no per-layer minimum count for local pruning (``round_to``
only rounds to multiples; ``max_pruning_ratio`` is not applied to the default per-step ratio,
only used to skip groups already below it), so rlprune caps the ratio instead:
``ratio <= min_u (1 - need_u / C_u)`` keeps every unit at ``need_u`` channels or more.
"""

from __future__ import annotations

import copy
import logging
import time

import torch
import torch_pruning as tp
from torch import nn

from rlprune.config import PruneConfig
from rlprune.data import Split
from rlprune.errors import ConfigError, PruningError
from rlprune.models import set_layout
from rlprune.peers.common import (
    TOLERANCE,
    TpIterativeResult,
    check_macs,
    check_target,
    tune,
)
from rlprune.pruning import Unit, classifier_names, count_macs_params, find_units, resolve_min_keep

__all__ = ["tp_iterative"]

log = logging.getLogger(__name__)

_AIM = 0.01  # the bisection stops inside +-1%, leaving margin to the +-2% contract
_MAX_DRY_RUNS = 40


def _ignored_names(model: nn.Module, units: list[Unit]) -> list[str]:
    """The classifier and every conv that is not a producer of a unit (excluded ones)."""
    producers = {p for u in units for p in u.producers}
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return list(dict.fromkeys(classifier_names(model) + [n for n in convs if n not in producers]))


def _pruner(
    model: nn.Module,
    example: torch.Tensor,
    ratios: tuple[float, ...],
    units: list[Unit],
    ignored: list[str],
) -> tp.pruner.BasePruner:
    """torch-pruning's pruner on ``model`` (traced in eval mode: no BN statistics update).

    ``ratios``: final pruning ratio per unit (in ``units``' order). The lowest is the pruner's
    ``pruning_ratio``; units that differ get theirs through ``pruning_ratio_dict`` (keyed by the
    unit's root conv; the same linear schedule and local ranking).
    """
    mods = dict(model.named_modules())
    base = min(ratios)
    model.eval()
    return tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=False,
        pruning_ratio=base,
        pruning_ratio_dict={
            mods[u.name]: r for u, r in zip(units, ratios, strict=True) if r != base
        }
        or None,
        iterative_steps=len(units),
        ignored_layers=[mods[n] for n in ignored],
        root_module_types=[nn.Conv2d],  # rlprune's units are rooted at convs
        forward_fn=lambda m, x: m(x),  # the default wraps the call in a bare `except:`
    )


def _schedule(units: list[Unit], ratios: tuple[float, ...]) -> tuple[int, ...]:
    """Channels every unit keeps after every step, as torch-pruning's local ranking computes
    them (``linear_scheduler``: step ``k`` of ``n`` has ratio ``k / float(n) * ratio``)."""
    n = len(units)
    return tuple(
        int(u.channels * (1 - (k / float(n)) * r))
        for k in range(1, n + 1)
        for u, r in zip(units, ratios, strict=True)
    )


class _DryRuns:
    """Exact final MACs for per-unit ratios, on deep copies pruned through all steps
    (memoised by the count schedule, which determines them)."""

    def __init__(
        self, model: nn.Module, example: torch.Tensor, units: list[Unit], ignored: list[str]
    ) -> None:
        self.model, self.example, self.units, self.ignored = model, example, units, ignored
        self.memo: dict[tuple[int, ...], int] = {}
        self.runs = 0

    def __call__(self, ratios: tuple[float, ...]) -> int:
        key = _schedule(self.units, ratios)
        if key not in self.memo:
            probe = copy.deepcopy(self.model)
            pruner = _pruner(probe, self.example, ratios, self.units, self.ignored)
            for _ in self.units:
                pruner.step()
            self.memo[key] = count_macs_params(probe, self.example)[0]
            self.runs += 1
        return self.memo[key]

    def err(self, ratios: tuple[float, ...], goal: float) -> float:
        """Relative distance of the final MACs from ``goal``."""
        return abs(self(ratios) / goal - 1)


def _uniform(dry: _DryRuns, need: dict[str, int], goal: float) -> tuple[float, float]:
    """Bisection on the uniform ratio (MACs are non-increasing in it), capped so every unit
    keeps ``need`` channels. Returns ``(lo, hi)`` with ``MACs(lo) > goal >= MACs(hi)``, or
    ``lo == hi`` when a ratio lands within 1%."""
    n = len(dry.units)
    # int() in torch-pruning floors C * (1 - ratio): stay a hair below the cap
    hi = max(0.0, min(1 - need[u.name] / u.channels for u in dry.units) - 1e-9)
    while hi > 0 and any(
        c < need[u.name]
        for c, u in zip(_schedule(dry.units, (hi,) * n)[-n:], dry.units, strict=True)
    ):
        hi = max(0.0, hi - 1e-6)
    if dry((hi,) * n) > goal * (1 + TOLERANCE):
        raise PruningError(
            f"tp-iterative: a ratio of {hi:.3f} (the most min_keep allows) leaves "
            f"{dry((hi,) * n) / goal:.3f}x the target MACs"
        )
    lo = 0.0
    while dry.runs < _MAX_DRY_RUNS and hi - lo > 1e-7:
        mid = (lo + hi) / 2
        macs = dry((mid,) * n)
        if abs(macs / goal - 1) <= _AIM:
            return mid, mid
        lo, hi = (mid, hi) if macs > goal else (lo, mid)
    return lo, hi


def _solve_ratios(dry: _DryRuns, need: dict[str, int], goal: float) -> tuple[float, ...]:
    """Per-unit ratios whose final MACs are closest to ``goal``: uniform if a uniform ratio
    lands within 1%; else the first ``j`` units (forward order) take the upper bracketing
    ratio and the rest the lower one, ``j`` bisected (MACs are non-increasing in ``j``)."""
    n = len(dry.units)
    lo, hi = _uniform(dry, need, goal)
    cands = [(lo,) * n, (hi,) * n]
    if lo != hi and min(dry.err(c, goal) for c in cands) > _AIM:
        # With few channels every unit's count jumps at the same ratios (8/16/32 channels all
        # cross k/8 together), so no single ratio may come within 2% of the target.
        log.info("tp-iterative: no uniform ratio within 1%%; mixing %.6f and %.6f", lo, hi)
        a, b = 0, n
        while b - a > 1:
            j = (a + b) // 2
            mix = (hi,) * j + (lo,) * (n - j)
            cands.append(mix)
            a, b = (j, b) if dry(mix) > goal else (a, j)
    return min(cands, key=lambda c: dry.err(c, goal))


def _run(
    pruner: tp.pruner.BasePruner,
    net: nn.Module,
    train: Split,
    cfg: PruneConfig,
    final: int,
    gen: torch.Generator,
    hflip: bool,
    device: torch.device | str,
    progress: bool,
) -> tuple[float, float, int]:
    """The real run: every pruner step followed by ``cfg.finetune_steps`` SGD steps, then the
    ``final`` fine-tune. Returns ``(pruning s, fine-tune s, fine-tune steps)``."""
    n, prune_s, tune_s, done = pruner.iterative_steps, 0.0, 0.0, 0
    for k in range(n + 1):
        t1 = time.perf_counter()
        if k < n:
            pruner.step()  # on the CPU (the example input lives there)
            set_layout(net, cfg.channels_last)  # torch-pruning hands back NCHW tensors
        t2 = time.perf_counter()
        steps = cfg.finetune_steps if k < n else final
        desc = f"tp-iterative fine-tune {k + 1}/{n + 1}"
        done += tune(
            net, train, steps, cfg, gen, hflip=hflip, device=device, progress=progress, desc=desc
        )
        net.cpu().eval()
        prune_s, tune_s = prune_s + t2 - t1, tune_s + time.perf_counter() - t2
    return prune_s, tune_s, done


def tp_iterative(
    model: nn.Module,
    train: Split,
    cfg: PruneConfig,
    target_macs: float,
    ft_steps: int,
    *,
    hflip: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> TpIterativeResult:
    """Prune a copy of ``model`` to ``target_macs`` with torch-pruning's iterative pruner.

    ``n_units`` pruner steps, each followed by ``cfg.finetune_steps`` SGD steps, then the
    final fine-tune (``round(cfg.final_finetune_epochs * steps_per_epoch)`` steps), all with
    :func:`~rlprune.train.fine_tune` (``cfg``'s lr, batch size, weight decay; ``hflip``) and one
    generator seeded with ``cfg.seed``: the same schedule and total as the RL search.

    Args:
        model: the trained network (not modified).
        train: training split ``[N, C, H, W]`` (fine-tuning; its first image is the example).
        cfg: ``seed, exclude, min_keep, finetune_*, batch_size, weight_decay, channels_last``.
        target_macs: fraction of ``model``'s MACs to reach (+-2%).
        ft_steps: the comparison's budget ``finetune_steps * n_units + final steps``.
        hflip: horizontal-flip augmentation while fine-tuning.
        device: where to fine-tune (pruning runs on the CPU).
        progress: tqdm bars while fine-tuning.

    Raises:
        ConfigError: bad target, or ``ft_steps`` is not this schedule's total.
        PruningError: the target is out of reach under ``min_keep``, or missed by more than 2%.
    """
    check_target(target_macs, ft_steps)
    net = copy.deepcopy(model).cpu().eval()
    example = train.images[:1].cpu()
    units = find_units(net, example, cfg.exclude)
    n, final = len(units), cfg.final_steps(len(train))
    if cfg.finetune_steps * n + final != ft_steps:
        raise ConfigError(
            f"tp-iterative's schedule is {cfg.finetune_steps} x {n} + {final} fine-tune steps, "
            f"not the budget of {ft_steps}"
        )
    need = {u.name: resolve_min_keep(cfg.min_keep, u.channels) for u in units}
    base_macs = count_macs_params(net, example)[0]
    ignored = _ignored_names(net, units)
    t0 = time.perf_counter()
    dry = _DryRuns(net, example, units, ignored)
    ratios = _solve_ratios(dry, need, target_macs * base_macs)
    pruner = _pruner(net, example, ratios, units, ignored)
    search_s = time.perf_counter() - t0
    log.info("tp-iterative: ratios %s after %d dry runs (%.1f s)", ratios, dry.runs, search_s)
    gen = torch.Generator().manual_seed(cfg.seed)
    prune_s, tune_s, done = _run(pruner, net, train, cfg, final, gen, hflip, device, progress)
    search_s += prune_s
    assert done == ft_steps, f"tp-iterative fine-tuned {done} steps, budget {ft_steps}"
    after = find_units(net, example, cfg.exclude)
    assert [u.name for u in after] == [u.name for u in units], "units renamed by pruning"
    kept = {u.name: u.channels for u in after}
    macs_ratio = check_macs("tp-iterative", net, example, base_macs, target_macs)
    log.info("tp-iterative: MACs %.1f%%, search %.1f s", 100 * macs_ratio, search_s)
    per_unit = {u.name: r for u, r in zip(units, ratios, strict=True)}
    return TpIterativeResult(
        set_layout(net, cfg.channels_last),
        kept,
        macs_ratio,
        search_s,
        tune_s,
        done,
        per_unit,
        dry.runs,
    )
