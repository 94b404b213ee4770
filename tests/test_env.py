"""The environment: exact reuse of repeated masks, and the NHWC layout kept across surgery."""

import dataclasses
import threading

import pytest
import torch

from rlprune.config import PruneConfig, RewardConfig, RolloutConfig
from rlprune.distributed import DistContext
from rlprune.env import PruningEnv
from rlprune.models import build_model, set_layout
from rlprune.pruning import MacModel, count_macs_params

from .toy import ToyNet, toy_split


def _env(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: PruneConfig) -> PruningEnv:
    macs, _ = count_macs_params(model, x[:1])
    return PruningEnv(model, (x, y), (x[:32], y[:32]), x[:1], cfg, 100.0, macs)


def test_repeated_masks_are_scored_once_with_the_same_accuracy() -> None:
    data = toy_split(64, seed=0)
    env = _env(ToyNet(), data.images, data.labels, PruneConfig())
    unit = env.units()[0]
    env.begin(unit, [unit.name])
    calls: list[torch.Tensor] = []
    scorer = env._scorer
    assert scorer is not None
    real = scorer.accuracy
    scorer.accuracy = lambda m: calls.append(m.clone()) or real(m)  # type: ignore[method-assign]
    keep_all = torch.ones(8)
    drop_k0 = keep_all.clone()
    drop_k0[0] = 0  # class 0's detector: a 25 pp drop
    drop_z = keep_all.clone()
    drop_z[5] = 0  # a zero filter: no drop
    first = env.score(torch.stack([drop_k0, drop_k0, drop_z]))
    second = env.score(torch.stack([drop_z, keep_all, drop_k0]))
    assert len(calls) == 3  # drop_k0, drop_z, keep_all: each scored once
    assert (env.scored, env.reused) == (3, 3)
    assert first.accs.tolist() == [75.0, 75.0, 100.0]
    assert second.accs.tolist() == [100.0, 100.0, 75.0]
    assert torch.equal(first.rewards[0], second.rewards[2])
    env.begin(unit, [unit.name])  # a new unit starts with an empty memo
    assert (env.scored, env.reused) == (0, 0)
    env.end()


@pytest.mark.parametrize("channels_last", [True, False])
def test_surgery_keeps_the_configured_layout(channels_last: bool) -> None:
    torch.manual_seed(0)
    # Start from the other layout: apply() must convert every tensor, not just the cut ones.
    model = set_layout(build_model("resnet20", 1, 10, 16, width=0.5).eval(), not channels_last)
    x, y = torch.randn(40, 1, 16, 16), torch.randint(0, 10, (40,))
    env = _env(model, x, y, PruneConfig(channels_last=channels_last))
    unit = env.units()[1]
    env.begin(unit, [u.name for u in env.units()])
    mask = torch.ones(unit.channels)
    mask[::2] = 0
    env.apply(mask)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=fmt) for p in convs)
    with torch.no_grad():
        assert model(x).shape == (40, 10)


@pytest.mark.parametrize("name", ["vgg-small", "resnet20"])
def test_budget_mode_mac_line_equals_the_direct_probe(name: str) -> None:
    """Budget modes read the unit's MAC line off the all-unit closed form (one probe per unit);
    it must equal the direct two-count measurement, exactly."""
    torch.manual_seed(0)
    model = build_model(name, 1, 10, 16, width=0.5).eval()
    x, y = torch.randn(40, 1, 16, 16), torch.randint(0, 10, (40,))
    cfg = PruneConfig(reward=RewardConfig(mode="budget", target_macs=0.5))
    env = _env(model, x, y, cfg)
    order = [u.name for u in env.units()]
    for unit in env.units()[::3]:
        env.begin(unit, order)
        assert env.mac_model == MacModel.measure(model, unit, x[:1]), unit.name
        assert 0 < env.budget < env.mac_model.total
    env.end()


class _Hub:
    """An in-process all-reduce for ranks that run as threads (two barriers per round)."""

    def __init__(self, n: int) -> None:
        self.parts: dict[int, torch.Tensor] = {}
        self.barrier = threading.Barrier(n, timeout=20)  # a crashed rank breaks it, no hang

    def all_reduce(self, rank: int, t: torch.Tensor) -> torch.Tensor:
        self.parts[rank] = t.clone()
        self.barrier.wait()
        total = sum(self.parts[r] for r in sorted(self.parts))
        self.barrier.wait()
        return torch.as_tensor(total)


@dataclasses.dataclass(frozen=True)
class _ThreadRank(DistContext):
    hub: _Hub | None = None

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        assert self.hub is not None
        return self.hub.all_reduce(self.rank, t)


def test_memo_under_sharding_matches_one_process() -> None:
    """3 ranks (threads) share the new masks of each batch; together they score each distinct
    mask once and every rank ends with the single process's accuracies and counters."""
    data = toy_split(64, seed=0)
    g = torch.Generator().manual_seed(3)
    pool = (torch.rand(5, 8, generator=g) > 0.3).float()
    batches = [pool[torch.randint(0, 5, (7,), generator=g)] for _ in range(3)]

    def ready(ctx: DistContext) -> tuple[PruningEnv, list[int]]:
        # Built in the main thread: torch.fx tracing (in begin) patches nn.Module globally
        # and is not thread-safe; only scoring runs in the rank threads.
        env = _env(ToyNet(), data.images, data.labels, PruneConfig())
        env.dist = ctx
        unit = env.units()[0]
        env.begin(unit, [unit.name])
        calls: list[int] = []
        scorer = env._scorer
        assert scorer is not None
        real = scorer.accuracy
        scorer.accuracy = lambda m: calls.append(1) or real(m)  # type: ignore[method-assign]
        return env, calls

    def run(env: PruningEnv, out: dict[int, list[list[float]]]) -> None:
        out[env.dist.rank] = [env.score(b).accs.tolist() for b in batches]

    env, calls = ready(DistContext())
    single: dict[int, list[list[float]]] = {}
    run(env, single)
    scored, reused = env.scored, env.reused
    assert len(calls) == scored == len({tuple(m.tolist()) for b in batches for m in b})
    assert reused == 21 - scored

    hub = _Hub(3)
    ranks = [ready(_ThreadRank(rank=r, world_size=3, hub=hub)) for r in range(3)]
    sharded: dict[int, list[list[float]]] = {}
    threads = [threading.Thread(target=run, args=(e, sharded)) for e, _ in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r, (e, _) in enumerate(ranks):
        assert sharded[r] == single[0]
        assert (e.scored, e.reused) == (scored, reused)
    assert sum(len(c) for _, c in ranks) == scored  # each distinct mask scored once, in all


@pytest.mark.parametrize("batched", [False, True])
def test_bf16_rollouts_run_in_bf16_and_exact_scoring_in_fp32(batched: bool) -> None:
    """``rollout.precision=bf16`` puts the suffix under bf16 autocast (one mask at a time and
    batched); ``exact=True`` (the chosen mask's re-score) runs fp32 past the bf16 memo, and the
    default fp32 config never sees bf16."""
    data = toy_split(64, seed=0)
    drop_k0, drop_z = torch.ones(8), torch.ones(8)
    drop_k0[0], drop_z[5] = 0, 0  # 75% and 100% (see the memo test)
    masks = torch.stack([drop_k0, drop_z])

    def dtypes(precision: str, exact: bool) -> tuple[set[torch.dtype], set[torch.dtype]]:
        """Logit dtypes of a first scoring (fills the memo) and of a second one."""
        model = ToyNet()
        rollout = RolloutConfig(precision=precision, reward_set=64, batched=batched, adapt_bn=False)
        env = _env(model, data.images, data.labels, PruneConfig(rollout=rollout))
        unit = env.units()[0]
        env.begin(unit, [unit.name])
        seen: list[set[torch.dtype]] = []
        hook = model.classifier.register_forward_hook(lambda m, i, o: seen[-1].add(o.dtype))
        for second in (False, True):
            seen.append(set())
            batch = env.score(masks, exact=exact and second)
            assert batch.accs.tolist() == [75.0, 100.0]
        hook.remove()
        env.end()
        return seen[0], seen[1]

    bf16, fp32 = torch.bfloat16, torch.float32
    assert dtypes("bf16", exact=False) == ({bf16}, set())  # then answered from the memo
    assert dtypes("bf16", exact=True) == ({bf16}, {fp32})
    assert dtypes("fp32", exact=True) == ({fp32}, set())  # fp32 memo values are exact already
