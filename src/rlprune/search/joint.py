"""The joint search: every unit at once (DECORE-style, Alwani et al., CVPR 2022).

The policy starts ON global magnitude's mask (the strongest heuristic here), or on the uniform
allocation of the same ranking where that one wins the fair choice below. Each episode
samples K whole-network masks, scores them in one batched pass on a slice of the reward set
(validation images) with the budget reward, updates the policy by REINFORCE, and trains the
network's weights one SGD step under a sampled mask, so rewards are measured after the network
has adapted to losing filters rather than before. ``joint.action=allocation`` learns each
unit's keep ratio (a Gaussian per unit, filters ranked by their group magnitude: AMC's action
space, He et al. ECCV 2018); ``filters`` learns every filter's keep (a Bernoulli per filter).

The budget is a MAC target, or a latency target priced by the latency table the layer-wise walk
uses (``reward.efficiency=latency``): the same search, every mask priced in predicted ms.

The end is a fair choice: the learnt mask (projected onto the target) and the start mask
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
import time
from collections.abc import Iterator

import torch

from rlprune.agent import sample_masks
from rlprune.agent.allocation import AllocationAgent
from rlprune.agent.joint import JointAgent
from rlprune.baselines import TOLERANCE, global_counts, prune_to_target
from rlprune.env.joint import Allocation, JointBatch, JointEnv, initial_levels
from rlprune.errors import ConfigError, PruningError
from rlprune.pruning import count_macs_params, group_magnitude
from rlprune.rollouts import accuracy_stderr
from rlprune.search.choice import Choice, choose, fair_pick, rerank
from rlprune.search.records import UnitRecord
from rlprune.search.runtime import derive_seed
from rlprune.search.session import Session
from rlprune.train import _endless, _sgd, evaluate

__all__ = ["JOINT_STREAM", "JointStartError", "joint"]

log = logging.getLogger(__name__)

JOINT_STREAM = 1 << 25  # seed tag of the episodes' sampling and training streams
JOINT_UNIT = "<joint>"  # name under which the run folder keeps the search's progress


class JointStartError(PruningError):
    """The start point cannot be built (global magnitude misses the target on this model,
    e.g. ``min_keep`` or coarse units forbid it); raised before any training or writing."""


def joint(s: Session) -> list[UnitRecord]:
    """Search all units jointly, cut once, fine-tune; one record per unit (forward order)."""
    if s.runtime.dist.active:
        raise ConfigError("strategy=joint runs in one process; drop torchrun or use layerwise")
    env = JointEnv(
        s.model, (s.env.reward_x, s.env.reward_y), s.env.calib, s.example, s.cfg,
        s.baseline.macs, s.env.lut,
    )  # fmt: skip
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
    original = copy.deepcopy(s.model.state_dict()) if s.cfg.joint.rerank_steps else None
    start_hits = None
    if s.cfg.joint.start_uniform and original is not None and begin.mask is not None:
        begin, start_hits = uniform_or_not(s, env, begin, original)
    agent.set_levels(initial_levels(env, agent.base_logits(state), begin.ratios))
    start_mask = begin.mask if begin.mask is not None else env.project(agent.logits(state))
    start = env.score_full(start_mask)
    if s.cfg.joint.action == "allocation":
        trained, train_s, learned = train_allocation(s, env, begin)
    else:
        trained, train_s = train_jointly(s, env, agent, state)
        learned = env.project(agent.logits(state))
    if original is not None:
        choice = rerank(s, env, start_mask, learned, original, start_hits)
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


def _sgd_stream(
    s: Session, tag: int
) -> tuple[torch.optim.SGD, torch.Generator, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The weights' optimiser and a training stream on ``derive_seed(seed, tag)``; the
    generator is returned too (the episodes sample their masks from it)."""
    cfg = s.cfg
    opt = _sgd(s.model, cfg.finetune_lr, 0.9, cfg.weight_decay)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, tag))
    return opt, gen, _endless(s.runtime.train, cfg.batch_size, gen, True, s.runtime.hflip)


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
    magnitudes across units picks for the target (the strongest heuristic here; under a latency
    budget the ranking removes channels until the predicted latency reaches it): each filter's
    prior logit is its score against its unit's cut, over ``joint.temperature``.
    """
    cfg = s.cfg
    if cfg.joint.init == "uniform":
        return Start()
    scores = group_magnitude(s.model, env.units, s.example)
    if env.latency is not None:
        kept = global_counts(
            env.latency, env.units, scores, env.target, min_keep=cfg.min_keep,
            round_to=cfg.round_to,
        )  # fmt: skip
    else:
        kept = prune_to_target(
            copy.deepcopy(s.model), "global-magnitude", cfg.reward.target_macs, s.example,
            min_keep=cfg.min_keep, exclude=cfg.exclude, round_to=cfg.round_to,
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
    ratios, start = [kept[u.name] / u.channels for u in env.units], torch.cat(mask)
    # prune_to_target checks the 2% only without rounding (whole blocks can leave it above);
    # global_counts never checks
    checked = cfg.round_to == 1 and env.latency is None
    if not checked and float(env.cost(start[None])[0]) > env.target * (1 + TOLERANCE):
        rc = cfg.reward
        goal = (
            f"{rc.target_macs:g}x MACs"
            if env.latency is None
            else f"{rc.target_latency:g}x latency"
        )
        raise PruningError(
            f"global magnitude stays above {goal} with "
            f"round_to={cfg.round_to} and min_keep={cfg.min_keep}"
        )
    return Start(torch.cat(prior), ratios, start)


def uniform_or_not(
    s: Session, env: JointEnv, begin: Start, original: dict[str, torch.Tensor]
) -> tuple[Start, torch.Tensor]:
    """The start between global magnitude's mask and the uniform allocation (every unit keeps
    the same share of its filters, ranked by the same scores; Li et al. 2017's allocation),
    by the final choice's rule; returns it and its recovered held-out correctness ``[M]``.
    Global ranking can starve units that uniform keeps (resnet20 at 0.3x MACs:
    bench/probe_allocations.py, docs/RESULTS.md)."""
    assert begin.prior is not None and begin.mask is not None
    uniform = Allocation(env, begin.prior).project(torch.zeros(len(env.units), dtype=torch.float64))
    mask, hits_ = fair_pick(
        s, env, [("global-magnitude", begin.mask), ("uniform", uniform)], original
    )
    ratios = (env.counts(mask[None])[0] / torch.tensor(env.sizes)).tolist()
    return Start(begin.prior, ratios, mask), hits_


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
                **_cost_ratio(env, batch),
                "train/pg_loss": stats.pg_loss,
                "train/entropy": stats.entropy,
                "train/mean_keep": stats.mean_keep,
            }
        )
    return trained, train_s


def _cost_ratio(env: JointEnv, batch: JointBatch) -> dict[str, float]:
    """The batch's mean predicted latency over the unpruned model's, under a latency budget
    (``rollout/macs_ratio`` beside it still counts MACs); nothing under a MAC budget."""
    if env.latency is None:
        return {}
    return {"rollout/latency_ratio": float(batch.cost.mean()) / env.base_cost}


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
                **_cost_ratio(env, batch),
                "train/pg_loss": pg,
            }
        )
    log.info(
        "joint allocation: keep ratios %s -> %s",
        [round(float(r), 3) for r in ratios],
        [round(float(r), 3) for r in torch.sigmoid(agent.mu.detach())],
    )
    return trained, train_s, alloc.project(agent.mu.detach())
