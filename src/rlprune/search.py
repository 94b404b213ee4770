"""The layer-by-layer search (Huang et al. 2018, Alg. 1) — read it top to bottom.

For each unit in walk order: build the state, train the agent on sampled masks (REINFORCE),
pick the best mask, cut the filters physically, fine-tune, checkpoint, move on. Then a final
fine-tune and the test-set evaluation. Rewards only ever see the validation split.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rlprune.agent import FEATURE_DIM, Agent
from rlprune.checkpoint import apply_shapes, capture_shapes
from rlprune.config import PruneConfig
from rlprune.data import Split
from rlprune.distributed import DistContext, FollowerRunDir, shard_split
from rlprune.env import PruningEnv
from rlprune.errors import PruningError
from rlprune.models import ModelSpec, set_layout
from rlprune.outputs import measure_model, write_outputs
from rlprune.pruning import count_macs_params, find_units
from rlprune.runstate import RunDir
from rlprune.train import evaluate, fine_tune

__all__ = ["PruneResult", "prune"]

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    """What :func:`prune` returns."""

    model: nn.Module
    baseline: dict[str, Any]
    pruned: dict[str, Any]
    units: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None


def _seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (same on resume as in an uninterrupted run)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def prune(
    model: nn.Module,
    train: Split,
    val: Split,
    config: PruneConfig | None = None,
    *,
    test: Split | None = None,
    out_dir: str | Path,
    spec: ModelSpec | None = None,
    hflip: bool = False,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
    dist_ctx: DistContext | None = None,
) -> PruneResult:
    """Prune ``model`` with the RL agent, unit by unit.

    Args:
        model: a trained CNN (not modified; a pruned copy is returned).
        train: fine-tuning data. val: reward set and model selection. test: final numbers only.
        config: search settings (defaults: accuracy-bounded, 1 pp).
        out_dir: run folder (config, metrics, state, report, pruned model files).
        spec: the zoo spec, if any, stored in the pruned-model file.
        hflip: whether fine-tuning may flip images horizontally.
        resume: continue a killed run in ``out_dir`` (same seed -> same masks).
        device: where fine-tuning runs (rollouts run there too).
        progress: tqdm bars.
        dist_ctx: torchrun job context (rollouts sharded, DDP fine-tuning, rank 0 writes).

    Returns:
        :class:`PruneResult` with the pruned model (NHWC when ``config.channels_last``, the
        default; ``rlprune.models.set_layout(model, False)`` turns it back) and the
        before/after measurements (taken in that layout).
    """
    cfg = config or PruneConfig()
    ctx = dist_ctx or DistContext()
    find_units(model, val.images[:1].to(next(model.parameters()).device), cfg.exclude)  # fail early
    run = RunDir(out_dir) if ctx.is_main else FollowerRunDir(out_dir)
    cfg = run.start(cfg, resume)
    ctx.barrier()  # followers read the folder rank 0 has just created
    original = copy.deepcopy(model).to(device).eval()
    model = set_layout(copy.deepcopy(original), cfg.channels_last)
    example = val.images[:1].to(device)
    reward_set = val.subset(min(cfg.rollout.reward_set, len(val)), seed=cfg.seed)
    calib = train.subset(min(cfg.rollout.calib_set, len(train)), seed=cfg.seed + 1)
    rx, ry = reward_set.images.to(device), reward_set.labels.to(device)

    # -- baseline: measured once, stored, reused on resume -------------------------------
    baseline = run.read_json("state/baseline.json")
    if baseline is None:
        # Only rank 0 writes reports: the other ranks skip the latency runs.
        baseline = measure_model(
            model, val, test, example, cfg.latency_runs, device, latency=ctx.is_main
        )
        baseline["reward_set_acc"] = evaluate(model, reward_set, device=device)
        run.write_json("state/baseline.json", baseline)
    base_acc, base_macs = baseline["reward_set_acc"], baseline["macs"]

    env = PruningEnv(
        model,
        (rx, ry),
        (calib.images.to(device), calib.labels.to(device)),
        example,
        cfg,
        base_acc,
        base_macs,
        ctx,
    )
    my_train = shard_split(train, ctx)

    def tune(seed: int, steps: int, desc: str) -> dict[str, float]:
        """Fine-tune; under torchrun with DDP, each rank on its stride with batch / N."""
        net: nn.Module = model
        if ctx.active:
            ids = (
                [device.index]
                if isinstance(device, torch.device) and device.type == "cuda"
                else None
            )
            net = DistributedDataParallel(model, device_ids=ids)
        out = fine_tune(
            net,
            my_train,
            steps,
            cfg.finetune_lr,
            batch_size=max(1, cfg.batch_size // ctx.world_size),
            weight_decay=cfg.weight_decay,
            hflip=hflip,
            generator=torch.Generator().manual_seed(seed),
            device=device,
            progress=progress and ctx.is_main,
            desc=desc,
        )
        ctx.sync_module(model)
        return out

    order = [u.name for u in env.units()]
    if cfg.order == "reverse":
        order.reverse()
    elif cfg.order == "macs":
        share = {u.name: u.mac_share for u in env.units()}
        order.sort(key=lambda n: -share[n])
    agent = Agent(FEATURE_DIM, cfg.agent, seed=cfg.seed)

    # -- resume: model after the last finished unit, then the agent inside the next one ---
    records: list[dict[str, Any]] = []
    saved = run.load_state("model.pt")
    if saved is not None:
        apply_shapes(model, saved["shapes"])  # keeps the layout set above
        model.load_state_dict(saved["state_dict"])
        model.eval()
        records = list(saved["records"])
        agent.load_state_dict(saved["agent"])
        log.info("resumed after %d of %d units", len(records), len(order))
    inside = run.load_state("agent.pt")

    for u_idx in range(len(records), len(order)):
        name = order[u_idx]
        units = {u.name: u for u in env.units()}
        if name not in units:
            raise PruningError(f"unit {name} vanished from the model during the walk")
        unit = units[name]
        t_unit = time.perf_counter()
        state = env.begin(unit, order)
        if cfg.agent.state == "weights" or not cfg.agent.shared:
            # A fresh policy per unit (the default: every layer starts from the prior with
            # full exploration); Huang et al.'s weight state needs one, its width varies.
            agent.reset(state.shape[1], seed=_seed(cfg.seed, u_idx))
        else:
            agent.new_unit()

        # -- agent training: K sampled masks per update, U updates (early stop) ------------
        prog: dict[str, Any] = {
            "update": 0,
            "best_reward": -math.inf,
            "best_mask": None,
            "best_acc": None,
            "since_best": 0,
            "curve": [],
            "max_curve": [],
            "decided": None,
            "stopped": False,
        }
        if inside is not None and inside.get("unit") == name:
            prog = dict(inside["progress"])
            agent.load_state_dict(inside["agent"])
            env.scored, env.reused = prog.get("scored", 0), prog.get("reused", 0)
            log.info("%s: resumed agent training at update %d", name, prog["update"])
        inside = None
        bar = tqdm(
            range(prog["update"], cfg.agent.updates),
            desc=f"agent {name}",
            disable=not progress or prog["stopped"],
            leave=False,
        )
        for upd in bar:
            if prog["stopped"] or prog["decided"] is not None:
                break
            gen = torch.Generator().manual_seed(_seed(cfg.seed, u_idx, upd))
            masks = agent.sample(state, gen)
            batch = env.score(masks)
            stats = agent.update(state, masks, batch.rewards)
            k = int(torch.argmax(batch.rewards))
            if float(batch.rewards[k]) > prog["best_reward"]:
                prog.update(
                    best_reward=float(batch.rewards[k]),
                    best_mask=masks[k].clone(),
                    best_acc=float(batch.accs[k]),
                    since_best=0,
                )
            else:
                prog["since_best"] += 1
            prog["curve"].append(stats.reward_mean)
            prog["max_curve"].append(stats.reward_max)
            prog.update(update=upd + 1, scored=env.scored, reused=env.reused)
            # Early stop (never before `patience` updates of this unit): converged policy or
            # reward plateau.
            prog["stopped"] = prog["update"] >= cfg.agent.patience and (
                stats.entropy < cfg.agent.min_entropy or prog["since_best"] >= cfg.agent.patience
            )
            run.log_metrics(
                {
                    "unit": name,
                    "update": upd,
                    "rollout/reward_mean": stats.reward_mean,
                    "rollout/reward_max": stats.reward_max,
                    "rollout/acc_mean": float(batch.accs.mean()),
                    "rollout/acc_stderr": env.stderr(float(batch.accs.mean())),
                    "rollout/keep_mean": float(batch.kept.float().mean() / unit.channels),
                    "train/pg_loss": stats.pg_loss,
                    "train/entropy": stats.entropy,
                    "train/mean_keep": stats.mean_keep,
                }
            )
            bar.set_postfix(best=f"{prog['best_reward']:.3f}", keep=f"{stats.mean_keep:.2f}")
            run.save_state(
                "agent.pt", {"unit": name, "progress": prog, "agent": agent.state_dict()}
            )

        # -- choose: best sampled mask vs the deterministic p > 0.5 mask ------------------
        if prog["decided"] is None:
            det = (agent.probs(state) > 0.5).float()
            det_batch = env.score(det[None])
            det_reward, det_acc = float(det_batch.rewards[0]), float(det_batch.accs[0])
            chosen, mask, acc = "best", prog["best_mask"], prog["best_acc"]
            if mask is None or det_reward > prog["best_reward"]:
                chosen, mask, acc = "deterministic", det, det_acc
            reward = max(det_reward, prog["best_reward"])
            if cfg.reward.mode != "accuracy" and cfg.reward.project:
                # AMC-style action projection: add back / drop filters in policy order until
                # the unit lands on its MAC budget, then score the projected mask.
                projected = env.project_to_budget(mask, agent.probs(state))
                if not torch.equal(projected, mask):
                    pb = env.score(projected[None])
                    chosen, mask = f"{chosen}+projected", projected
                    acc, reward = float(pb.accs[0]), float(pb.rewards[0])
            if cfg.rollout.precision != "fp32":  # decide and report on exact fp32 numbers
                eb = env.score(mask[None], exact=True)
                acc, reward = float(eb.accs[0]), float(eb.rewards[0])
            collapsed = (cfg.reward.mode == "accuracy" and reward <= 0) or (
                acc is not None and base_acc - acc > 50.0
            )
            if collapsed:  # never destroy a unit: keep it whole (issue 7)
                log.warning(
                    "%s: no mask within bounds (reward %.3f); unit left unpruned", name, reward
                )
                chosen, mask = "unpruned", torch.ones(unit.channels)
            prog["decided"] = {
                "mask": mask,
                "chosen": chosen,
                "reward": reward,
                "acc": acc,
                "det_reward": det_reward,
                "det_acc": det_acc,
                "det_kept": torch.nonzero(det).flatten().tolist(),
            }
            prog.update(scored=env.scored, reused=env.reused)
            run.save_state(
                "agent.pt", {"unit": name, "progress": prog, "agent": agent.state_dict()}
            )
        decided = prog["decided"]

        # -- surgery, fine-tune, checkpoint ----------------------------------------------
        t_agent = time.perf_counter()
        before = (capture_shapes(model), copy.deepcopy(model.state_dict()))
        kept = env.apply(decided["mask"])
        ft = tune(_seed(cfg.seed, u_idx, 1 << 20), cfg.finetune_steps, f"fine-tune {name}")
        t_tuned = time.perf_counter()
        val_acc = evaluate(model, val, device=device)
        # Accuracy-bounded mode: a cut whose short fine-tune leaves val accuracy more than
        # `guard` x the bound below the baseline is undone (the final, longer fine-tune
        # recovers the rest), so the walk cannot drift far outside the bound.
        allowed = cfg.reward.guard * cfg.reward.max_acc_drop
        if cfg.reward.mode == "accuracy" and baseline["val_acc"] - val_acc > allowed:
            log.warning(
                "%s: val acc %.2f%% after fine-tune is beyond the bound; cut undone", name, val_acc
            )
            apply_shapes(model, before[0])
            model.load_state_dict(before[1])
            model.eval()
            kept, decided = list(range(unit.channels)), {**decided, "chosen": "reverted"}
            val_acc = evaluate(model, val, device=device)
        macs, params = count_macs_params(model, example)
        record = {
            "unit": name,
            "producers": list(unit.producers),
            "consumers": list(unit.consumers),
            "channels_before": unit.channels,
            "channels_after": len(kept),
            "kept": kept,
            "chosen": decided["chosen"],
            "reward": decided["reward"],
            "rollout_acc": decided["acc"],
            "det_reward": decided["det_reward"],
            "det_acc": decided["det_acc"],
            "det_kept": decided["det_kept"],
            "updates": prog["update"],
            "rollouts_scored": env.scored,  # counted across a resume (kept in agent.pt)
            "rollouts_reused": env.reused,
            "reward_curve": prog["curve"],
            "reward_max_curve": prog["max_curve"],
            "budget_macs": env.budget if cfg.reward.mode != "accuracy" else None,
            "finetune_loss": ft["loss"],
            "val_acc": val_acc,
            "macs": macs,
            "params": params,
            "reward_set_stderr": env.stderr(base_acc),
            # wall seconds of this process (a resumed unit counts only its resumed part)
            "agent_s": t_agent - t_unit,
            "finetune_s": t_tuned - t_agent,
        }
        records.append(record)
        run.log_metrics(
            {
                "unit": name,
                "eval/val_acc": val_acc,
                "model/macs_ratio": macs / base_macs,
                "model/params_ratio": params / baseline["params"],
                "model/channels_after": len(kept),
            }
        )
        log.info(
            "%s: %d -> %d channels (%s), val acc %.2f%%, MACs %.1f%% (%d rollouts, %d reused)",
            name,
            unit.channels,
            len(kept),
            decided["chosen"],
            val_acc,
            100 * macs / base_macs,
            env.scored,
            env.reused,
        )
        run.save_state(
            "model.pt",
            {
                "shapes": capture_shapes(model),
                "state_dict": model.state_dict(),
                "records": records,
                "agent": agent.state_dict(),
            },
        )
    env.end()

    # -- final fine-tune and measurement ---------------------------------------------------
    final = run.load_state("final.pt")
    if final is not None:
        model.load_state_dict(final["state_dict"])
    else:
        steps = round(cfg.final_finetune_epochs * math.ceil(len(train) / cfg.batch_size))
        tune(_seed(cfg.seed, 1 << 30), steps, "final fine-tune")
        run.save_state("final.pt", {"state_dict": model.state_dict()})
    model.eval()
    pruned = measure_model(model, val, test, example, cfg.latency_runs, device, ctx.is_main)
    if ctx.is_main:
        write_outputs(run, model, original, spec, example, baseline, pruned, records, cfg)
    ctx.barrier()
    return PruneResult(model, baseline, pruned, records, run.root)
