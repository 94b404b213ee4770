"""The joint search: every unit at once (DECORE-style, Alwani et al., CVPR 2022).

One policy gives a keep probability to every filter of the network (a shared per-filter
network plus a learnt level per unit). Each episode samples K whole-network masks, scores them
in one batched pass on a slice of the reward set (validation images) with the budget reward,
updates the policy by REINFORCE, and trains the network's weights one SGD step under a sampled
mask, so rewards are measured after the network has adapted to losing filters rather than
before. The allocation across layers is learnt, not spread uniformly. At the end the logits
are projected onto the MAC target (a common shift; each unit keeps its highest-logit filters),
the filters are cut and the model is fine-tuned for the rest of the budget.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Iterator

import torch

from rlprune.agent import sample_masks
from rlprune.agent.joint import JointAgent
from rlprune.baselines import prune_to_target
from rlprune.env.joint import JointEnv, initial_levels
from rlprune.errors import ConfigError
from rlprune.pruning import count_macs_params
from rlprune.rollouts import accuracy_stderr
from rlprune.search.records import UnitRecord
from rlprune.search.runtime import derive_seed
from rlprune.search.session import FINETUNE_STREAM, Session
from rlprune.train import _endless, _sgd, evaluate

__all__ = ["JOINT_STREAM", "joint"]

log = logging.getLogger(__name__)

JOINT_STREAM = 1 << 25  # seed tag of the episodes' sampling and training streams
JOINT_UNIT = "<joint>"  # name under which the run folder keeps the search's progress


def joint(s: Session) -> list[UnitRecord]:
    """Search all units jointly, cut once, fine-tune; one record per unit (forward order)."""
    if s.runtime.dist.active:
        raise ConfigError("strategy=joint runs in one process; drop torchrun or use layerwise")
    env = JointEnv(
        s.model, (s.env.reward_x, s.env.reward_y), s.env.calib, s.example, s.cfg, s.baseline.macs
    )
    agent_cfg = dataclasses.replace(s.cfg.agent, lr=s.cfg.joint.lr)
    agent = JointAgent(agent_cfg, env.owner, len(env.units), seed=s.cfg.seed)
    finished = s.runtime.load_walk(s.model, agent)
    if finished:  # the search, cut and fine-tune of a killed run are done: keep them
        env.close()
        return finished
    t0 = time.perf_counter()
    state = env.state()  # [N, D]
    agent.set_levels(initial_levels(env, agent.base_logits(state), start_ratios(s, env)))
    start = env.score_full(env.project(agent.logits(state)))
    trained = train_jointly(s, env, agent, state)
    mask = env.project(agent.logits(state))
    end = env.score_full(mask)
    log.info(
        "joint: deterministic mask reward %.3f -> %.3f (acc %.2f%% -> %.2f%%) in %d episodes",
        start.rewards[0], end.rewards[0], start.accs[0], end.accs[0], s.cfg.joint.steps,
    )  # fmt: skip
    agent_s = time.perf_counter() - t0
    kept = env.apply(mask)
    t1 = time.perf_counter()
    rest = max(0, s.cfg.finetune_steps * len(env.units) - trained)
    ft = s.runtime.tune(s.model, derive_seed(s.cfg.seed, FINETUNE_STREAM), rest, "fine-tune")
    val_acc = evaluate(s.model, s.val, device=s.runtime.device)
    macs, params = count_macs_params(s.model, s.example)
    records = []
    for unit, keep in zip(env.units, kept.values(), strict=True):
        records.append(
            UnitRecord(
                unit=unit.name,
                producers=list(unit.producers),
                consumers=list(unit.consumers),
                channels_before=unit.channels,
                channels_after=len(keep),
                kept=keep,
                chosen="joint",
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
                finetune_loss=ft["loss"],
                val_acc=val_acc,
                macs=macs,
                params=params,
                reward_set_stderr=accuracy_stderr(s.base_acc, len(env.reward_y)),
                agent_s=agent_s / len(env.units),
                finetune_s=(time.perf_counter() - t1) / len(env.units),
                det_reward_start=float(start.rewards[0]),
            )
        )
    s.runtime.save_walk(s.model, records, agent)
    return records


def start_ratios(s: Session, env: JointEnv) -> list[float] | None:
    """Per-unit keep ratios the policy starts from: None (uniform) or, with
    ``joint.init=global-magnitude``, the allocation that ranking torch-pruning's normalised
    group magnitudes across units picks for the target (the strongest heuristic here)."""
    if s.cfg.joint.init == "uniform":
        return None
    cfg = s.cfg
    copy_ = copy.deepcopy(s.model)
    kept = prune_to_target(
        copy_, "global-magnitude", cfg.reward.target_macs, s.example,
        min_keep=cfg.min_keep, exclude=cfg.exclude,
    )  # fmt: skip
    return [kept[u.name] / u.channels for u in env.units]


def train_jointly(s: Session, env: JointEnv, agent: JointAgent, state: torch.Tensor) -> int:
    """The episodes: sample K masks, score, REINFORCE, one SGD step under a mask. Returns the
    number of SGD steps the weights took (counted in the fine-tune budget)."""
    cfg = s.cfg
    k = cfg.joint.samples
    opt = _sgd(s.model, cfg.finetune_lr, 0.9, cfg.weight_decay)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, JOINT_STREAM))
    stream: Iterator[tuple[torch.Tensor, torch.Tensor]] = _endless(
        s.runtime.train, cfg.batch_size, gen, True, s.runtime.hflip
    )
    trained = 0
    for step in range(cfg.joint.steps):
        probs = torch.sigmoid(agent.logits(state))
        masks = sample_masks(probs, k, gen)  # [K, N]
        batch = env.score(masks)
        stats = agent.update(state, masks, batch.rewards)
        if cfg.joint.train_weights:
            x, y = next(stream)
            env.train_step(masks[0], x, y, opt)
            trained += 1
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
    return trained
