"""The layer-by-layer search (Huang et al., WACV 2018, Alg. 1).

For each unit in walk order: build the state, train the agent on sampled masks (REINFORCE),
choose a mask, cut the filters physically and fine-tune. Rewards only see the reward set
(validation images); the test split never reaches a strategy.
"""

from __future__ import annotations

import copy
import logging
import time

import torch

from rlprune.agent import FEATURE_DIM, Agent
from rlprune.checkpoint import apply_shapes, capture_shapes
from rlprune.config import PruneConfig
from rlprune.env import PruningEnv
from rlprune.errors import PruningError
from rlprune.progress import bar as progress_bar
from rlprune.pruning import Unit, count_macs_params
from rlprune.search.records import Decision, UnitProgress, UnitRecord
from rlprune.search.runtime import derive_seed
from rlprune.search.session import COLLAPSE_DROP_PP, FINAL_STREAM, FINETUNE_STREAM, Session
from rlprune.train import evaluate

__all__ = ["layerwise"]

log = logging.getLogger(__name__)


def layerwise(s: Session) -> list[UnitRecord]:
    """Prune ``s.model`` unit by unit; returns one record per unit in walk order."""
    order = walk_order(s.env, s.cfg)
    agent = Agent(FEATURE_DIM, s.cfg.agent, seed=s.cfg.seed)
    records = s.runtime.load_walk(s.model, agent)
    for idx in range(len(records), len(order)):
        unit = current_unit(s.env, order[idx])
        t0 = time.perf_counter()
        state = s.env.begin(unit, order)
        start_policy(agent, state, s.cfg, idx)
        progress = s.runtime.load_unit(unit.name, agent) or UnitProgress()
        s.env.restore_counts(progress.scored, progress.reused)
        train_agent(s, agent, unit, state, progress, idx)
        if progress.decided is None:
            progress.decided = choose_mask(s, agent, unit, state, progress)
            progress.scored, progress.reused = s.env.scored, s.env.reused
            s.runtime.save_unit(unit.name, progress, agent)
        agent_s = time.perf_counter() - t0
        records.append(cut_and_tune(s, unit, progress, idx, agent_s))
        s.runtime.save_walk(s.model, records, agent)
    s.env.end()
    s.runtime.final_tune(s.model, derive_seed(s.cfg.seed, FINAL_STREAM), s.runtime.final_steps())
    return records


def walk_order(env: PruningEnv, cfg: PruneConfig) -> list[str]:
    """Unit names in the order the walk visits them (``cfg.order``)."""
    units = env.units()
    if cfg.order == "macs":  # largest share of the MACs first
        units = sorted(units, key=lambda u: -u.mac_share)
    names = [u.name for u in units]
    return names[::-1] if cfg.order == "reverse" else names


def current_unit(env: PruningEnv, name: str) -> Unit:
    """The unit ``name`` of the model as it is now (earlier cuts change its neighbours)."""
    units = {u.name: u for u in env.units()}
    if name not in units:
        raise PruningError(f"unit {name} vanished from the model during the walk")
    return units[name]


def start_policy(agent: Agent, state: torch.Tensor, cfg: PruneConfig, idx: int) -> None:
    """A fresh policy per unit (the default: every layer starts from the importance prior with
    full exploration; Huang et al.'s weight state needs one, its width varies), or the shared
    policy with its keep level restarted."""
    if cfg.agent.state == "weights" or not cfg.agent.shared:
        agent.reset(state.shape[1], seed=derive_seed(cfg.seed, idx))
    else:
        agent.new_unit()


def train_agent(
    s: Session, agent: Agent, unit: Unit, state: torch.Tensor, p: UnitProgress, idx: int
) -> None:
    """REINFORCE on ``unit``: K sampled masks per update, at most U updates, early stop once
    the policy has converged or the best reward has not improved for ``patience`` updates."""
    cfg = s.cfg.agent
    done = p.stopped or p.decided is not None
    bar = progress_bar(
        range(p.update, cfg.updates),
        desc=f"agent {unit.name}",
        enabled=s.runtime.progress and not done,
    )
    for upd in bar:
        if p.stopped or p.decided is not None:
            break
        gen = torch.Generator().manual_seed(derive_seed(s.cfg.seed, idx, upd))
        masks = agent.sample(state, gen)  # [K, C]
        batch = s.env.score(masks)
        stats = agent.update(state, masks, batch.rewards)
        p.observe(batch.rewards, batch.accs, masks)
        p.curve.append(stats.reward_mean)
        p.max_curve.append(stats.reward_max)
        p.update, p.scored, p.reused = upd + 1, s.env.scored, s.env.reused
        p.stopped = p.update >= cfg.patience and (
            stats.entropy < cfg.min_entropy or p.since_best >= cfg.patience
        )
        acc_mean = float(batch.accs.mean())
        s.runtime.log_metrics(
            {
                "unit": unit.name,
                "update": upd,
                "rollout/reward_mean": stats.reward_mean,
                "rollout/reward_max": stats.reward_max,
                "rollout/acc_mean": acc_mean,
                "rollout/acc_stderr": s.env.stderr(acc_mean),
                "rollout/keep_mean": float(batch.kept.float().mean() / unit.channels),
                "train/pg_loss": stats.pg_loss,
                "train/entropy": stats.entropy,
                "train/mean_keep": stats.mean_keep,
            }
        )
        bar.set_postfix(best=f"{p.best_reward:.3f}", keep=f"{stats.mean_keep:.2f}")
        s.runtime.save_unit(unit.name, p, agent)


def choose_mask(
    s: Session, agent: Agent, unit: Unit, state: torch.Tensor, p: UnitProgress
) -> Decision:
    """The better of the best sampled mask and the deterministic ``p > 0.5`` mask; optionally
    projected onto the unit's MAC budget (AMC); a unit whose best mask collapses the network
    is left whole; with ``round_to`` the kept count is rounded to a multiple."""
    env, rc = s.env, s.cfg.reward
    det = (agent.probs(state) > 0.5).float()
    det_batch = env.score(det[None])
    det_reward, det_acc = float(det_batch.rewards[0]), float(det_batch.accs[0])
    chosen, mask, acc = "best", p.best_mask, p.best_acc
    if mask is None or det_reward > p.best_reward:
        chosen, mask, acc = "deterministic", det, det_acc
    reward = max(det_reward, p.best_reward)
    if rc.mode != "accuracy" and rc.project:
        # AMC-style action projection (He et al. 2018): add back / drop filters in policy
        # order until the unit lands on its MAC budget, then score the projected mask.
        projected = env.project_to_budget(mask, agent.probs(state))
        if not torch.equal(projected, mask):
            pb = env.score(projected[None])
            chosen, mask = f"{chosen}+projected", projected
            acc, reward = float(pb.accs[0]), float(pb.rewards[0])
    if s.cfg.round_to > 1:  # kept channels on a multiple the CPU kernels favour
        rounded = env.round_mask(mask, agent.probs(state))
        if not torch.equal(rounded, mask):
            rb = env.score(rounded[None])
            chosen, mask = f"{chosen}+rounded", rounded
            acc, reward = float(rb.accs[0]), float(rb.rewards[0])
    if s.cfg.rollout.precision != "fp32":  # decide and report on exact fp32 numbers
        eb = env.score(mask[None], exact=True)
        acc, reward = float(eb.accs[0]), float(eb.rewards[0])
    collapsed = (rc.mode == "accuracy" and reward <= 0) or (
        acc is not None and s.base_acc - acc > COLLAPSE_DROP_PP
    )
    if collapsed:  # never destroy a unit: keep it whole
        log.warning(
            "%s: no mask within bounds (reward %.3f); unit left unpruned", unit.name, reward
        )
        chosen, mask = "unpruned", torch.ones(unit.channels)
    det_kept = torch.nonzero(det).flatten().tolist()
    return Decision(mask, chosen, reward, acc, det_reward, det_acc, det_kept)


def cut_and_tune(s: Session, unit: Unit, p: UnitProgress, idx: int, agent_s: float) -> UnitRecord:
    """Cut the decided mask, fine-tune, and in accuracy-bounded mode undo a cut whose short
    fine-tune leaves val accuracy more than ``guard`` x the bound below the baseline (the final,
    longer fine-tune recovers the rest, so the walk cannot drift far outside the bound)."""
    assert p.decided is not None
    cfg, model, decided = s.cfg, s.model, p.decided
    t0 = time.perf_counter()
    before = (capture_shapes(model), copy.deepcopy(model.state_dict()))
    kept = s.env.apply(decided.mask)
    seed = derive_seed(cfg.seed, idx, FINETUNE_STREAM)
    ft = s.runtime.tune(model, seed, cfg.finetune_steps, f"fine-tune {unit.name}")
    finetune_s = time.perf_counter() - t0
    val_acc = evaluate(model, s.val, device=s.runtime.device)
    allowed = cfg.reward.guard * cfg.reward.max_acc_drop
    chosen = decided.chosen
    if cfg.reward.mode == "accuracy" and s.baseline.val_acc - val_acc > allowed:
        log.warning(
            "%s: val acc %.2f%% after fine-tune is beyond the bound; cut undone", unit.name, val_acc
        )
        apply_shapes(model, before[0])
        model.load_state_dict(before[1])
        model.eval()
        kept, chosen = list(range(unit.channels)), "reverted"
        val_acc = evaluate(model, s.val, device=s.runtime.device)
    macs, params = count_macs_params(model, s.example)
    record = UnitRecord(
        unit=unit.name,
        producers=list(unit.producers),
        consumers=list(unit.consumers),
        channels_before=unit.channels,
        channels_after=len(kept),
        kept=kept,
        chosen=chosen,
        reward=decided.reward,
        rollout_acc=decided.acc,
        det_reward=decided.det_reward,
        det_acc=decided.det_acc,
        det_kept=decided.det_kept,
        updates=p.update,
        rollouts_scored=s.env.scored,
        rollouts_reused=s.env.reused,
        reward_curve=p.curve,
        reward_max_curve=p.max_curve,
        budget_macs=s.env.budget if cfg.reward.mode != "accuracy" else None,
        finetune_loss=ft["loss"],
        val_acc=val_acc,
        macs=macs,
        params=params,
        reward_set_stderr=s.env.stderr(s.base_acc),
        agent_s=agent_s,
        finetune_s=finetune_s,
    )
    log_unit(s, record)
    return record


def log_unit(s: Session, r: UnitRecord) -> None:
    """One metrics line and one log line per finished unit."""
    base = s.baseline
    s.runtime.log_metrics(
        {
            "unit": r.unit,
            "eval/val_acc": r.val_acc,
            "model/macs_ratio": r.macs / base.macs,
            "model/params_ratio": r.params / base.params,
            "model/channels_after": r.channels_after,
        }
    )
    log.info(
        "%s: %d -> %d channels (%s), val acc %.2f%%, MACs %.1f%% (%d rollouts, %d reused)",
        r.unit,
        r.channels_before,
        r.channels_after,
        r.chosen,
        r.val_acc,
        100 * r.macs / base.macs,
        r.rollouts_scored,
        r.rollouts_reused,
    )
