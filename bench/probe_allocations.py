"""Probe: does a short recovery tell the uniform allocation (each unit keeps the same share,
filters ranked by group magnitude) from global magnitude's, as the joint search's fair choice
would (the same 50 steps on a cut copy, McNemar's z on the held-out validation images)?

    python bench/probe_allocations.py MODEL TARGET SEED     # e.g. resnet20 0.3 0

Uses the committed baselines (docs/results/base/) and the benchmark's search config.
"""

import copy
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from rlprune.checkpoint import load_model
from rlprune.config import PruneConfig, RewardConfig
from rlprune.data import load_dataset
from rlprune.env.joint import Allocation, JointEnv
from rlprune.pruning import count_macs_params
from rlprune.search.choice import held_out, mcnemar_z, recovered_hits
from rlprune.search.joint import start_point
from rlprune.train import fine_tune

model_name, target, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model, _, _ = load_model(
    Path(__file__).resolve().parents[1] / "docs/results/base" / f"{model_name}.pt"
)
model.eval()
data = load_dataset("fashion-mnist", seed=0)
cfg = PruneConfig(
    seed=seed,
    finetune_steps=50,
    final_finetune_epochs=0.5,
    strategy="joint",
    reward=RewardConfig(mode="budget", target_macs=target),
)
example = data.val.images[:1]
reward = data.val.subset(cfg.rollout.reward_set, seed=seed)
calib = data.train.subset(cfg.rollout.calib_set, seed=seed + 1)
base_macs = count_macs_params(model, example)[0]
env = JointEnv(
    model, (reward.images, reward.labels), (calib.images, calib.labels), example, cfg, base_macs
)


def tune(m, s, n, desc):
    return fine_tune(
        m,
        data.train,
        n,
        cfg.finetune_lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        generator=torch.Generator().manual_seed(s),
    )


s = SimpleNamespace(
    cfg=cfg,
    model=model,
    example=example,
    val=data.val,
    runtime=SimpleNamespace(tune=tune, train=data.train, hflip=False),
)
begin = start_point(s, env)
alloc = Allocation(env, begin.prior)
uniform = alloc.project(torch.zeros(len(env.units), dtype=torch.float64))
original = copy.deepcopy(model.state_dict())
images = held_out(s, env)
t = time.time()
h_gm = recovered_hits(s, env, begin.mask, original, images)
h_un = recovered_hits(s, env, uniform, original, images)
macs = env.macs(torch.stack([begin.mask, uniform])) / base_macs
print(
    f"{model_name} t{target} s{seed}: held-out GM {100 * h_gm.double().mean():.2f} uniform "
    f"{100 * h_un.double().mean():.2f} z(uniform-GM) {mcnemar_z(h_un, h_gm):+.2f} "
    f"MACs {macs[0]:.3f}/{macs[1]:.3f} ({time.time() - t:.0f}s)",
    flush=True,
)
env.close()
