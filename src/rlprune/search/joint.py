"""The joint search: every unit at once (DECORE-style, Alwani et al., CVPR 2022).

The policy starts ON global magnitude's mask (the strongest heuristic here). Each episode
samples K whole-network masks, scores them in one batched pass on a slice of the reward set
(validation images) with the budget reward, updates the policy by REINFORCE, and trains the
network's weights one SGD step under a sampled mask, so rewards are measured after the network
has adapted to losing filters rather than before. ``joint.action=allocation`` learns each
unit's keep ratio (a Gaussian per unit, filters ranked by their group magnitude: AMC's action
space, He et al. ECCV 2018); ``filters`` learns every filter's keep (a Bernoulli per filter).

The end is a fair choice: the learnt mask (projected onto the MAC target) and the start mask
each get the same short recovery from the ORIGINAL weights, and the learnt one replaces the
start only if it is significantly more accurate on validation images no reward saw (McNemar's
paired test). The chosen mask is cut from the original weights and fine-tuned with the whole
budget on the stream the one-shot heuristics use, so any difference from global magnitude's
result is the structure's, not a schedule's or the search weights'.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Iterator

import torch

from rlprune.agent import sample_masks
from rlprune.agent.allocation import AllocationAgent
from rlprune.agent.joint import JointAgent
from rlprune.baselines import prune_to_target
from rlprune.env.joint import Allocation, JointBatch, JointEnv, hits, initial_levels
from rlprune.errors import ConfigError, PruningError
from rlprune.pruning import count_macs_params, group_magnitude
from rlprune.rollouts import accuracy_stderr
from rlprune.search.records import UnitRecord
from rlprune.search.runtime import derive_seed
from rlprune.search.session import Session
from rlprune.train import _endless, _sgd, evaluate

__all__ = ["JOINT_STREAM", "JointStartError", "joint"]

log = logging.getLogger(__name__)

JOINT_STREAM = 1 << 25  # seed tag of the episodes' sampling and training streams
RERANK_STREAM = 1 << 26  # seed tag of the final choice's recovery stream
JOINT_UNIT = "<joint>"  # name under which the run folder keeps the search's progress


class JointStartError(PruningError):
    """The start point cannot be built (global magnitude misses the MAC target on this model,
    e.g. ``min_keep`` or coarse units forbid it); raised before any training or writing."""


def joint(s: Session) -> list[UnitRecord]:
    """Search all units jointly, cut once, fine-tune; one record per unit (forward order)."""
    if s.runtime.dist.active:
        raise ConfigError("strategy=joint runs in one process; drop torchrun or use layerwise")
    env = JointEnv(
        s.model, (s.env.reward_x, s.env.reward_y), s.env.calib, s.example, s.cfg, s.baseline.macs
    )
    try:  # the mask hooks come off whatever happens (a failure, Ctrl-C)
        return _search(s, env)
    finally:
        env.close()


def _search(s: Session, env: JointEnv) -> list[UnitRecord]:
    try:
        begin = start_point(s, env)
    except PruningError as e:  # nothing trained or written yet: the caller may walk instead
        raise JointStartError(f"the joint search cannot start here: {e}") from e
    agent_cfg = dataclasses.replace(s.cfg.agent, lr=s.cfg.joint.lr)
    agent = JointAgent(agent_cfg, env.owner, len(env.units), seed=s.cfg.seed, prior=begin.prior)
    finished = s.runtime.load_walk(s.model, agent)
    if finished:  # the search, cut and fine-tune of a killed run are done: keep them
        return finished
    t0 = time.perf_counter()
    state = env.state()  # [N, D]
    agent.set_levels(initial_levels(env, agent.base_logits(state), begin.ratios))
    start_mask = begin.mask if begin.mask is not None else env.project(agent.logits(state))
    start = env.score_full(start_mask)
    original = copy.deepcopy(s.model.state_dict()) if s.cfg.joint.rerank_steps else None
    if s.cfg.joint.action == "allocation":
        trained, train_s, learned = train_allocation(s, env, begin)
    else:
        trained, train_s = train_jointly(s, env, agent, state)
        learned = env.project(agent.logits(state))
    if original is not None:
        choice = rerank(s, env, start_mask, learned, original)
        # the episodes' weights are gone: their SGD steps were search cost, not fine-tuning
        trained, train_s = 0, 0.0
    else:
        choice = choose(s, env, start_mask, learned)
    agent_s = time.perf_counter() - t0 - train_s  # the search's own time, SGD steps apart
    kept = env.apply(choice.mask)
    t1 = time.perf_counter()
    # One cut, so one cosine schedule over the whole remaining budget (the per-unit share not
    # spent training under masks plus the final epochs), on the stream the one-shot heuristics
    # of ``rlprune compare`` fine-tune on: restarting the schedule after a one-shot cut costs
    # accuracy (0.36 pp for global magnitude at 0.15x MACs on vgg-small).
    rest = max(0, s.cfg.finetune_steps * len(env.units) - trained) + s.runtime.final_steps()
    ft_loss = s.runtime.final_tune(s.model, s.cfg.seed, rest)
    times = (agent_s, time.perf_counter() - t1 + train_s)
    records = _records(s, env, kept, choice, start, ft_loss, times)
    s.runtime.save_walk(s.model, records, agent)
    return records


def _records(
    s: Session,
    env: JointEnv,
    kept: dict[str, list[int]],
    choice: Choice,
    start: JointBatch,
    ft_loss: float,
    times: tuple[float, float],
) -> list[UnitRecord]:
    """One record per unit of the cut and fine-tuned ``s.model``; the search's and the
    fine-tune's seconds ``times`` are shared equally among the units."""
    val_acc = evaluate(s.model, s.val, device=s.runtime.device)
    macs, params = count_macs_params(s.model, s.example)
    end, n = choice.learned, len(env.units)
    return [
        UnitRecord(
            unit=unit.name,
            producers=list(unit.producers),
            consumers=list(unit.consumers),
            channels_before=unit.channels,
            channels_after=len(keep),
            kept=keep,
            chosen=choice.chosen,
            reward=float(end.rewards[0]),
            rollout_acc=float(end.accs[0]),
            det_reward=float(end.rewards[0]),
            det_acc=float(end.accs[0]),
            det_kept=[],
            updates=s.cfg.joint.steps,
            rollouts_scored=s.cfg.joint.steps * s.cfg.joint.samples,
            rollouts_reused=0,
            reward_curve=[],
            reward_max_curve=[],
            budget_macs=env.target,
            finetune_loss=ft_loss,
            val_acc=val_acc,
            macs=macs,
            params=params,
            reward_set_stderr=accuracy_stderr(s.base_acc, len(env.reward_y)),
            agent_s=times[0] / n,
            finetune_s=times[1] / n,
            det_reward_start=float(start.rewards[0]),
        )
        for unit, keep in zip(env.units, kept.values(), strict=True)
    ]


@dataclasses.dataclass(frozen=True)
class Choice:
    """The final mask: the learnt policy's or, if it does no better on held-out images, the
    one the policy started from (so the search never ends below its prior).

    Attributes:
        mask: ``[N]`` the chosen whole-network mask.
        chosen: ``"joint"`` (learnt) or ``"prior"`` (the start).
        learned: the learnt deterministic mask scored on the reward set.
    """

    mask: torch.Tensor
    chosen: str
    learned: JointBatch


def choose(s: Session, env: JointEnv, start: torch.Tensor, learned: torch.Tensor) -> Choice:
    """Keep the learnt mask only if it is strictly more accurate than the start mask on the
    validation images outside the reward set (with the weights as the episodes left them; both
    masks are near the ones those weights were trained under)."""
    scored = env.score_full(learned)
    if torch.equal(start, learned):
        log.info("joint: the learnt mask is the start mask")
        return Choice(learned, "joint", scored)
    images = held_out(s, env)
    a, b = env.score_full(learned, images), env.score_full(start, images)
    won = float(a.accs[0]) > float(b.accs[0])
    log.info(
        "joint: held-out accuracy %.2f%% learnt vs %.2f%% start (%d images): keep the %s mask",
        a.accs[0], b.accs[0], len(images[1]), "learnt" if won else "start",
    )  # fmt: skip
    return Choice(learned, "joint", scored) if won else Choice(start, "prior", scored)


def rerank(
    s: Session,
    env: JointEnv,
    start: torch.Tensor,
    learned: torch.Tensor,
    original: dict[str, torch.Tensor],
) -> Choice:
    """Choose between the learnt and the start mask after the same short recovery of each
    (``joint.rerank_steps`` SGD steps, cosine learning rate, one data stream) of a copy cut
    from the ``original`` weights, on held-out validation images; restores the original
    weights. Neither mask profits from weights the episodes trained under it, so the choice is
    between structures, and the recoveries cost what the pruned networks cost."""
    scored = env.score_full(learned)
    s.model.load_state_dict(original)
    if torch.equal(start, learned):
        log.info("joint: the learnt mask is the start mask")
        return Choice(learned, "joint", scored)
    images = held_out(s, env)
    hits = [recovered_hits(s, env, mask, original, images) for mask in (learned, start)]
    z = mcnemar_z(hits[0], hits[1])
    won = z > s.cfg.joint.rerank_z
    log.info(
        "joint: after %d recovery steps, held-out accuracy %.2f%% learnt vs %.2f%% start "
        "(McNemar z = %.2f, needs > %.2f): keep the %s mask", s.cfg.joint.rerank_steps,
        100 * float(hits[0].double().mean()), 100 * float(hits[1].double().mean()), z,
        s.cfg.joint.rerank_z, "learnt" if won else "start",
    )  # fmt: skip
    return Choice(learned, "joint", scored) if won else Choice(start, "prior", scored)


def recovered_hits(
    s: Session,
    env: JointEnv,
    mask: torch.Tensor,
    original: dict[str, torch.Tensor],
    images: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Which ``images`` ``[M]`` (bool) a copy of the network cut by ``mask [N]`` from the
    ``original`` weights classifies right after ``joint.rerank_steps`` fine-tune steps on the
    stream ``derive_seed(seed, RERANK_STREAM)``."""
    model = env.cut_copy(mask, original)
    seed = derive_seed(s.cfg.seed, RERANK_STREAM)
    s.runtime.tune(model, seed, s.cfg.joint.rerank_steps, "re-rank")
    return hits(model.eval(), images, s.cfg.rollout.batch_size)


def mcnemar_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """McNemar's paired statistic ``(n_ab - n_ba) / sqrt(n_ab + n_ba)`` of two classifiers'
    per-image correctness ``[M]`` (bool), ``n_ab`` the images only ``a`` gets right; > 0 when
    ``a`` is the better, about N(0, 1) when they are equally good (0 when they never differ)."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return 0.0 if only_a + only_b == 0 else (only_a - only_b) / math.sqrt(only_a + only_b)


def _sgd_stream(
    s: Session, tag: int
) -> tuple[torch.optim.SGD, torch.Generator, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The weights' optimiser and a training stream on ``derive_seed(seed, tag)``; the
    generator is returned too (the episodes sample their masks from it)."""
    cfg = s.cfg
    opt = _sgd(s.model, cfg.finetune_lr, 0.9, cfg.weight_decay)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, tag))
    return opt, gen, _endless(s.runtime.train, cfg.batch_size, gen, True, s.runtime.hflip)


def held_out(s: Session, env: JointEnv) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation images the rewards never saw: the reward set is the first ``reward_set``
    images of the same seeded permutation of the validation split, these are the rest."""
    n = len(env.reward_y)
    perm = s.val.subset(len(s.val), seed=s.cfg.seed)
    if len(perm) <= n:
        log.warning("joint: no validation images outside the reward set; choosing on it")
        return env.reward_x, env.reward_y
    dev = env.reward_x.device
    return perm.images[n:].to(dev), perm.labels[n:].to(dev)


@dataclasses.dataclass(frozen=True)
class Start:
    """Where the policy starts: ``prior`` logits ``[N]`` (None: the shared network's), per-unit
    keep ``ratios`` (None: uniform) and the heuristic's own ``mask`` ``[N]`` (None: the
    projection of the starting logits), which competes with the learnt one at the end."""

    prior: torch.Tensor | None = None
    ratios: list[float] | None = None
    mask: torch.Tensor | None = None


def start_point(s: Session, env: JointEnv) -> Start:
    """Where the policy starts.

    ``joint.init=uniform``: the shared policy network's importance prior, levels on the uniform
    allocation. ``global-magnitude``: ON the mask that ranking torch-pruning's normalised group
    magnitudes across units picks for the target (the strongest heuristic here): each filter's
    prior logit is its score against its unit's cut, over ``joint.temperature``.
    """
    cfg = s.cfg
    if cfg.joint.init == "uniform":
        return Start()
    scores = group_magnitude(s.model, env.units, s.example)
    kept = prune_to_target(
        copy.deepcopy(s.model), "global-magnitude", cfg.reward.target_macs, s.example,
        min_keep=cfg.min_keep, exclude=cfg.exclude,
    )  # fmt: skip
    prior, mask = [], []
    for u in env.units:
        score, k = scores[u.name].float(), kept[u.name]
        top = torch.sort(score, descending=True).values
        cut = top[-1] - 1.0 if k >= len(top) else (top[k - 1] + top[k]) / 2
        prior.append((score - cut) / cfg.joint.temperature)
        keep = torch.zeros_like(score)
        keep[torch.topk(score, k).indices] = 1.0  # the heuristic keeps its k best per unit
        mask.append(keep)
    ratios = [kept[u.name] / u.channels for u in env.units]
    return Start(torch.cat(prior), ratios, torch.cat(mask))


def train_jointly(
    s: Session, env: JointEnv, agent: JointAgent, state: torch.Tensor
) -> tuple[int, float]:
    """The episodes: sample K masks, score, REINFORCE, one SGD step under a mask. Returns the
    SGD steps the weights took (counted in the fine-tune budget) and their wall seconds
    (fine-tuning time, not search time)."""
    cfg = s.cfg
    k = cfg.joint.samples
    opt, gen, stream = _sgd_stream(s, JOINT_STREAM)
    trained, train_s = 0, 0.0
    for step in range(cfg.joint.steps):
        probs = torch.sigmoid(agent.logits(state))
        masks = sample_masks(probs, k, gen)  # [K, N]
        batch = env.score(masks)
        stats = agent.update(state, masks, batch.rewards)
        if cfg.joint.train_weights:
            t0 = time.perf_counter()
            x, y = next(stream)
            # "mode": the policy's most likely mask (the structure it would cut now), so the
            # steps also serve the pruned network; "sample": a sampled one (DECORE).
            on = masks[0] if cfg.joint.train_mask == "sample" else (probs > 0.5).float()
            env.train_step(on, x, y, opt)
            trained, train_s = trained + 1, train_s + time.perf_counter() - t0
        s.runtime.log_metrics(
            {
                "unit": JOINT_UNIT,
                "update": step,
                "rollout/reward_mean": stats.reward_mean,
                "rollout/reward_max": stats.reward_max,
                "rollout/acc_mean": float(batch.accs.mean()),
                "rollout/macs_ratio": float(batch.macs.mean()) / s.baseline.macs,
                "train/pg_loss": stats.pg_loss,
                "train/entropy": stats.entropy,
                "train/mean_keep": stats.mean_keep,
            }
        )
    return trained, train_s


def train_allocation(s: Session, env: JointEnv, begin: Start) -> tuple[int, float, torch.Tensor]:
    """The episodes of ``joint.action=allocation``: sample K allocations around the policy's
    mean, score their masks, REINFORCE, one SGD step under a mask. Returns the SGD steps, their
    seconds and the learnt mean's mask projected on the target ``[N]``."""
    cfg = s.cfg
    assert begin.prior is not None and begin.ratios is not None
    alloc = Allocation(env, begin.prior)
    ratios = torch.tensor(
        [min(max(r, 0.5 / c), 1 - 0.5 / c) for r, c in zip(begin.ratios, env.sizes, strict=True)],
        dtype=torch.float64,
    )
    agent = AllocationAgent(torch.logit(ratios), cfg.joint.sigma, cfg.joint.lr)
    opt, gen, stream = _sgd_stream(s, JOINT_STREAM)
    trained, train_s = 0, 0.0
    for step in range(cfg.joint.steps):
        actions = agent.sample(cfg.joint.samples, gen)
        masks = alloc.masks(actions)
        batch = env.score(masks)
        pg = agent.update(actions, batch.rewards)
        if cfg.joint.train_weights:
            t0 = time.perf_counter()
            x, y = next(stream)
            on = masks[0]  # "sample"; "mode": the policy mean's allocation
            if cfg.joint.train_mask == "mode":
                on = alloc.masks(agent.mu.detach()[None])[0]
            env.train_step(on, x, y, opt)
            trained, train_s = trained + 1, train_s + time.perf_counter() - t0
        s.runtime.log_metrics(
            {
                "unit": JOINT_UNIT,
                "update": step,
                "rollout/reward_mean": float(batch.rewards.mean()),
                "rollout/reward_max": float(batch.rewards.max()),
                "rollout/acc_mean": float(batch.accs.mean()),
                "rollout/macs_ratio": float(batch.macs.mean()) / s.baseline.macs,
                "train/pg_loss": pg,
            }
        )
    log.info(
        "joint allocation: keep ratios %s -> %s",
        [round(float(r), 3) for r in ratios],
        [round(float(r), 3) for r in torch.sigmoid(agent.mu.detach())],
    )
    return trained, train_s, alloc.project(agent.mu.detach())
