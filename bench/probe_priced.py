"""Probe: does ranking channels by importance per unit of cost saved (HALP's knapsack, Shen et
al., NeurIPS 2022) give a better start than global magnitude at the same budget, judged as the
joint search's fair choice judges (50 recovery steps on a cut copy, McNemar's z on the held-out
validation images)? docs/LATENCY.md, "A latency-priced ranking".

Importance: torch-pruning's group Taylor ``|w * dL/dw|`` summed over each channel's dependency
group, not normalised (a loss estimate, comparable across units, as HALP uses), on 1024
training images. Cost: the budget's, MACs or the walk's latency table (batch 64).

    python bench/probe_priced.py MODEL TARGET SEED macs|latency   # e.g. resnet20 0.3 0 macs
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import torch_pruning as tp

from rlprune.baselines import Cost
from rlprune.checkpoint import load_model
from rlprune.config import PruneConfig, RewardConfig
from rlprune.data import load_dataset
from rlprune.env.joint import Allocation, JointEnv
from rlprune.models import training_layout
from rlprune.pruning import count_macs_params
from rlprune.pruning.importance import _group_scores, build_graph  # unnormalised: HALP's
from rlprune.pruning.latency import LatencyLUT
from rlprune.pruning.units import Unit, resolve_min_keep
from rlprune.search.choice import held_out, mcnemar_z, recovered_hits
from rlprune.search.joint import start_point
from rlprune.train import fine_tune

ROOT = Path(__file__).resolve().parents[1]


def priced_counts(cost: Cost, units: list[Unit], scores: dict[str, torch.Tensor], goal: float,
                  min_keep: float, lookahead: int = 8) -> dict[str, int]:  # fmt: skip
    """Greedy knapsack: remove, lowest score first within a unit, from the unit whose next
    ``1..lookahead`` removals give up the least score per unit of cost saved (the lookahead
    sees past a latency staircase's flat steps), until ``cost`` reaches ``goal``."""
    need = {u.name: resolve_min_keep(min_keep, u.channels) for u in units}
    low = {u.name: torch.sort(scores[u.name].double()).values.tolist() for u in units}
    counts = {u.name: u.channels for u in units}
    cur = cost(counts)
    while cur > goal:
        best = None
        for u in units:
            n, k, lost = u.name, counts[u.name], 0.0
            for _ in range(lookahead):
                if k - 1 < need[n]:
                    break
                lost += low[n][u.channels - k]
                k -= 1
                new = cost({**counts, n: k})
                if new < 0.99 * goal:
                    break
                if cur - new > 0 and (best is None or lost / (cur - new) < best[0]):
                    best = (lost / (cur - new), n, k, new)
        if best is None:
            print(f"priced ranking: stops at cost {cur:.4g}, above the goal {goal:.4g}")
            break
        _, n, counts[n], cur = best
    return counts


def main() -> None:
    model_name, target, seed, kind = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.manual_seed(0)
    model, _, _ = load_model(ROOT / "docs/results/base" / f"{model_name}.pt")
    model.eval()
    data = load_dataset("fashion-mnist", seed=0)
    lut = None
    if kind == "latency":
        rc = RewardConfig(mode="budget", efficiency="latency", target_latency=target)
        lut = LatencyLUT.load(ROOT / f"docs/results/latency/{model_name}_lut.json")
    else:
        rc = RewardConfig(mode="budget", target_macs=target)
    cfg = PruneConfig(seed=seed, finetune_steps=50, final_finetune_epochs=0.5, strategy="joint",
                      reward=rc)  # fmt: skip
    example = data.val.images[:1]
    reward = data.val.subset(cfg.rollout.reward_set, seed=seed)
    calib = data.train.subset(cfg.rollout.calib_set, seed=seed + 1)
    base_macs = count_macs_params(model, example)[0]
    env = JointEnv(model, (reward.images, reward.labels), (calib.images, calib.labels), example,
                   cfg, base_macs, lut=lut)  # fmt: skip

    def tune(m, s, n, desc):
        return fine_tune(m, data.train, n, cfg.finetune_lr, batch_size=cfg.batch_size,
                         weight_decay=cfg.weight_decay, generator=torch.Generator().manual_seed(s))  # fmt: skip

    s = SimpleNamespace(cfg=cfg, model=model, example=example, val=data.val,
                        runtime=SimpleNamespace(tune=tune, train=data.train, hflip=False))  # fmt: skip
    begin = start_point(s, env)
    uniform = Allocation(env, begin.prior).project(torch.zeros(len(env.units), dtype=torch.float64))
    graph = build_graph(model, example)
    batch = data.train.subset(1024, seed=seed + 7)
    with training_layout(model):  # oneDNN's narrow strided 1x1 kernel (rlprune.models)
        F.cross_entropy(model(batch.images), batch.labels).backward()
    taylor = tp.importance.TaylorImportance(group_reduction="sum", normalizer=None)
    scores = _group_scores(model, env.units, graph, taylor)
    model.zero_grad(set_to_none=True)
    kept = priced_counts(env.cost_model, env.units, scores, env.target, cfg.min_keep)
    parts = []
    for u in env.units:
        keep = torch.zeros(u.channels)
        keep[torch.topk(scores[u.name].float(), kept[u.name]).indices] = 1
        parts.append(keep)
    masks = {"GM": begin.mask, "uniform": uniform, "priced": torch.cat(parts)}
    original = copy.deepcopy(model.state_dict())
    images = held_out(s, env)
    t = time.time()
    hits = {n: recovered_hits(s, env, m, original, images) for n, m in masks.items()}
    stack = torch.stack(list(masks.values()))
    cost, macs = env.cost(stack) / env.base_cost, env.macs(stack) / base_macs
    print(f"{model_name} {kind} {target:g} seed {seed}: held-out " + ", ".join(
        f"{n} {100 * h.double().mean():.2f} (cost {c:.3f}, MACs {m:.3f})"
        for (n, h), c, m in zip(hits.items(), cost.tolist(), macs.tolist(), strict=True)
    ) + f"; z(priced - GM) {mcnemar_z(hits['priced'], hits['GM']):+.2f}, z(priced - uniform) "
        f"{mcnemar_z(hits['priced'], hits['uniform']):+.2f} ({time.time() - t:.0f} s)")  # fmt: skip
    for n, m in masks.items():
        print(f"  {n:8s} kept {[int(c) for c in env.counts(m[None])[0].tolist()]}")
    env.close()


if __name__ == "__main__":
    main()
