"""Frozen, validated configuration dataclasses; reading them: :mod:`rlprune.config_load`.

Every config validates itself on construction and names the offending key in its error, so a bad
value fails at start-up, not hours into a search. ``to_dict`` output is written into every run
folder as ``config.yaml`` and loads back to an equal config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, TypeVar

from rlprune.config_load import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    load_yaml,
)
from rlprune.config_load import check as _check
from rlprune.config_load import check_choice as _check_choice
from rlprune.config_load import check_range as _range

__all__ = [
    "AgentConfig",
    "JointConfig",
    "PruneConfig",
    "RewardConfig",
    "RolloutConfig",
    "SearchStrategy",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_yaml",
]

T = TypeVar("T")

StateKind = Literal["features", "weights"]
BaselineKind = Literal["batch-mean", "moving-average"]
RewardMode = Literal["accuracy", "budget", "amc"]
Efficiency = Literal["macs", "filters", "latency"]
Precision = Literal["fp32", "bf16"]
WalkOrder = Literal["forward", "reverse", "macs"]
SearchStrategy = Literal["auto", "layerwise", "joint"]
StrategyName = Literal["layerwise", "joint"]
JointSignal = Literal["loss", "accuracy"]
JointInit = Literal["uniform", "global-magnitude"]
JointTrainMask = Literal["mode", "sample"]
JointAction = Literal["filters", "allocation"]


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take it; seed + 1 stays in range
MAX_BATCH = 65_536
MAX_SAMPLES = 1_024  # masks per policy update / joint episode
MAX_HIDDEN = 4_096
MAX_UPDATES = 10_000
MAX_STEPS = 10_000_000
MAX_IMAGES = 1_000_000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Baseline training (SGD + Nesterov, OneCycle LR, crop/flip augmentation)."""

    epochs: float = 3.0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    label_smoothing: float = 0.0
    seed: int = 0
    channels_last: bool = True  # NHWC weights: oneDNN's fast CPU path (docs/BENCHMARKS.md)

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        _range(self.epochs, 0, 10_000, "epochs")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _range(self.batch_size, 1, MAX_BATCH, "batch_size")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _range(self.lr, 0, 100, "lr")
        _range(self.seed, 0, MAX_SEED, "seed")
        _check(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Policy network and REINFORCE settings (Huang et al. 2018, Sec. 3)."""

    state: StateKind = "features"  # per-filter statistics, or Huang et al.'s raw weights
    hidden: int = 64
    lr: float = 0.05
    samples: int = 10  # K masks per policy update
    updates: int = 8  # U policy updates per unit (upper bound; early stop may end sooner)
    entropy_coef: float = 0.02
    baseline: BaselineKind = "batch-mean"
    baseline_momentum: float = 0.9
    normalize_advantage: bool = True
    grad_clip: float = 1.0
    init_keep: float = 0.7  # initial keep probability (bias of the output layer)
    patience: int = 4  # updates without a new best reward before stopping (and the minimum)
    min_entropy: float = 0.02  # mean per-filter Bernoulli entropy (nats) that counts as converged
    prior: float = 1.0  # scale of the importance prior (features state); 0 = none
    shared: bool = False  # one policy across units (True) or a fresh one per unit (False)

    def __post_init__(self) -> None:
        _check_choice(self.state, StateKind, "agent.state")
        _check(self.hidden >= 1, "agent.hidden", "must be >= 1")
        _range(self.hidden, 1, MAX_HIDDEN, "agent.hidden")
        _check(self.lr > 0, "agent.lr", "must be > 0")
        _range(self.lr, 0, 100, "agent.lr")
        _check(self.samples >= 2, "agent.samples", "must be >= 2 (a baseline needs two)")
        _range(self.samples, 2, MAX_SAMPLES, "agent.samples")
        _check(self.updates >= 1, "agent.updates", "must be >= 1")
        _range(self.updates, 1, MAX_UPDATES, "agent.updates")
        _range(self.patience, 1, MAX_UPDATES, "agent.patience")
        _range(self.entropy_coef, 0, 100, "agent.entropy_coef")
        _range(self.grad_clip, 0, 1e6, "agent.grad_clip")
        _range(self.prior, 0, 1e3, "agent.prior")
        _check(self.entropy_coef >= 0, "agent.entropy_coef", "must be >= 0")
        _check_choice(self.baseline, BaselineKind, "agent.baseline")
        _check(0 <= self.baseline_momentum < 1, "agent.baseline_momentum", "must be in [0, 1)")
        _check(self.grad_clip > 0, "agent.grad_clip", "must be > 0")
        _check(0 < self.init_keep < 1, "agent.init_keep", "must be in (0, 1)")
        _check(self.patience >= 1, "agent.patience", "must be >= 1")
        _check(self.min_entropy >= 0, "agent.min_entropy", "must be >= 0")
        _check(self.prior >= 0, "agent.prior", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Reward settings; see :mod:`rlprune.reward` for the formulas.

    Exactly one of ``max_acc_drop`` (accuracy-bounded mode) and a budget (``target_macs`` or
    ``target_latency``, budget mode) drives the search; ``mode="amc"`` uses AMC's
    ``-error * log(cost)`` with the budget. ``efficiency="latency"`` prices masks with a
    measured latency table (:mod:`rlprune.pruning.latency`): the file ``latency_table``, or one
    profiled on the fly at ``latency_batch`` with ``latency_threads`` threads; budget mode then
    takes ``target_latency`` (a fraction of the baseline's latency) instead of ``target_macs``.
    """

    mode: RewardMode = "accuracy"
    max_acc_drop: float = 1.0  # pp, accuracy mode: final tolerated drop
    tolerance: float = 0.0  # pp, tolerated drop b of a rollout before fine-tuning; 0 -> auto
    efficiency: Efficiency = "macs"  # what the efficiency term counts
    target_macs: float = 0.0  # fraction of baseline MACs to reach (budget/amc modes)
    guard: float = 2.0  # accuracy mode: undo a cut if val drop after its fine-tune > guard * bound
    project: bool = False  # budget modes: project the chosen mask onto the unit's MAC budget
    budget_penalty: float = 100.0  # pp per unit of log-overshoot of the unit's MAC budget
    budget_under: float = 20.0  # pp per unit of log-undershoot (pruning past the unit's share)
    target_latency: float = 0.0  # fraction of baseline latency to reach (budget/amc modes)
    latency_table: str | None = None  # `rlprune profile` JSON; None: profiled on the fly
    latency_batch: int = 64  # the batch size whose latency the reward prices
    latency_threads: int = 0  # threads of an on-the-fly profile; 0: torch's current number

    def __post_init__(self) -> None:
        _check_choice(self.mode, RewardMode, "reward.mode")
        _check(self.max_acc_drop > 0, "max_acc_drop", f"must be > 0, got {self.max_acc_drop}")
        # accuracies are in %: a drop beyond 100 pp means nothing (and 1e308 overflows to inf)
        _range(self.max_acc_drop, 0, 100, "max_acc_drop")
        _check(self.tolerance >= 0, "reward.tolerance", "must be >= 0")
        _range(self.tolerance, 0, 100, "reward.tolerance")
        _check_choice(self.efficiency, Efficiency, "reward.efficiency")
        self._check_targets()
        _check(self.guard > 0, "reward.guard", "must be > 0")
        _range(self.guard, 0, 100, "reward.guard")
        _check(self.budget_penalty >= 0, "reward.budget_penalty", "must be >= 0")
        _range(self.budget_penalty, 0, 1e4, "reward.budget_penalty")
        _check(self.budget_under >= 0, "reward.budget_under", "must be >= 0")
        _range(self.budget_under, 0, 1e4, "reward.budget_under")
        _range(self.latency_batch, 1, MAX_BATCH, "reward.latency_batch")
        _range(self.latency_threads, 0, 1024, "reward.latency_threads")
        _check(
            self.latency_table is None or self.efficiency == "latency",
            "reward.latency_table",
            "a latency table prices latency: set reward.efficiency=latency (or drop the table)",
        )

    def _check_targets(self) -> None:
        """Accuracy mode: no budget. Budget modes: exactly one of target_macs/target_latency,
        the one that matches ``efficiency`` (a latency budget needs latency prices)."""
        if self.mode == "accuracy":
            for key, flag in (
                ("target_macs", "--target-macs"),
                ("target_latency", "--target-latency"),
            ):
                v = getattr(self, key)
                _check(
                    v == 0, key, f"accuracy mode takes --max-acc-drop, not {flag} (choose one mode)"
                )
            return
        _check(
            self.target_macs == 0 or self.target_latency == 0,
            "target_latency",
            "give one budget: --target-macs or --target-latency, not both",
        )
        key = "target_latency" if self.efficiency == "latency" else "target_macs"
        v = getattr(self, key)
        _check(0 < v < 1, key, f"must be in (0, 1) for {self.mode} mode, got {v}")

    @property
    def b(self) -> float:
        """Tolerated rollout drop in pp (Huang et al.'s ``b``), measured BEFORE fine-tuning.

        Auto (``tolerance=0``) = 4x the final bound: fine-tuning recovers most of a cut's
        drop, and a cut it cannot recover is undone by the search's post-fine-tune check.
        """
        return self.tolerance if self.tolerance > 0 else 4.0 * self.max_acc_drop


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How rollouts, the search's hot loop, are scored (prefix cache, masks, set size, memory)."""

    reward_set: int = 1000  # validation images each rollout is scored on
    batch_size: int = 250
    fast: bool = True  # prefix cache + suffix-only evaluation (exact; falls back if untraceable)
    cache_mb: float = 512.0  # cap on cached activations; above it: fp16, then subsample
    calib_set: int = 256  # images for per-filter activation statistics
    batched: bool = False  # score the K masks of an update in one pass (see bench/rollouts.py)
    adapt_bn: bool = True  # re-estimate downstream BN statistics per mask (EagleEye)
    # "bf16": rollouts run under bf16 autocast. NOT exact: it trades a small accuracy error
    # for speed on CPUs with native bf16 (AVX512-BF16); the measured figures are in
    # docs/BENCHMARKS.md (bench/rollouts.py). The chosen mask is re-scored in fp32 (its
    # rollout_acc and reward are exact); curves and det_* stay bf16. "fp32" (default): exact
    # rewards, so a search gives the same masks whichever scorer runs it.
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        _check(self.reward_set >= 10, "rollout.reward_set", "must be >= 10")
        _range(self.reward_set, 10, MAX_IMAGES, "rollout.reward_set")
        _check_choice(self.precision, Precision, "rollout.precision")
        _check(self.batch_size >= 1, "rollout.batch_size", "must be >= 1")
        _range(self.batch_size, 1, MAX_BATCH, "rollout.batch_size")
        _check(self.cache_mb > 0, "rollout.cache_mb", "must be > 0")
        _range(self.cache_mb, 0, 1e6, "rollout.cache_mb")
        _check(self.calib_set >= 2, "rollout.calib_set", "must be >= 2")
        _range(self.calib_set, 2, MAX_IMAGES, "rollout.calib_set")


@dataclasses.dataclass(frozen=True)
class JointConfig:
    """The joint strategy: every unit at once (DECORE-style, Alwani et al. CVPR 2022).

    Each of ``steps`` episodes samples ``samples`` whole-network masks (per-unit keep ratios
    with ``action=allocation``, per-filter keeps with ``filters``), scores them in one batched
    pass on ``images`` images of the reward set (the same images for all of them, so their
    differences are the masks'), updates the policy, and (``train_weights``) takes one SGD step
    of the network's weights under a mask. With ``rerank_steps > 0`` those weights only serve
    the search; otherwise their steps are part of the fine-tune budget (the cut model then gets
    ``finetune_steps * units - steps`` more).
    """

    # 30 episodes and 50-step recoveries (three with the uniform start) keep the search's time
    # near the cut model's fine-tune (docs/RESULTS.md, vgg-small 0.3x; 200 episodes had not
    # found better masks)
    steps: int = 30
    samples: int = 4
    images: int = 100  # reward-set images each episode's masks are scored on (round robin)
    # Adam step of the joint policy: lower than a unit's (agent.lr), because its many episodes
    # would otherwise drive every keep probability to 0 or 1 within a few dozen of them.
    lr: float = 0.01
    # The accuracy term of the budget reward: "loss" uses 100 x the masks' cross-entropy on the
    # scored images (a finer signal than "accuracy", their top-1 accuracy in %).
    signal: JointSignal = "loss"
    # Where the policy starts: ON the mask global-magnitude ranking picks (the strongest
    # heuristic of docs/RESULTS.md; learning moves filters near its cut and the allocation), or
    # the shared policy network's importance prior with the uniform allocation.
    init: JointInit = "global-magnitude"
    # With init=global-magnitude the policy starts ON that heuristic's mask: filter i's prior
    # logit is (score_i - threshold_u) / temperature, its normalised group magnitude against its
    # unit's cut, so sampled masks differ from it only near the cut.
    temperature: float = 0.1
    train_weights: bool = True
    # The mask the weights train under: the policy's most likely one ("mode", the structure
    # the search would cut now, so those steps also serve the pruned network) or a sampled one
    # ("sample", DECORE's way; weights then serve every allocation near the policy's, as in
    # slimmable networks). Trained on from (rerank_steps=0), "sample" lost 1.0 pp to "mode" at
    # 0.15x MACs on vgg-small; as search-only weights, "mode" let the allocation drift to masks
    # its own weights favour.
    train_mask: JointTrainMask = "sample"
    # Fair final choice: > 0 discards the weights the episodes trained, gives the learnt and the
    # start mask ``rerank_steps`` SGD steps each, cut from the original weights, on one stream,
    # keeps the one more accurate on held-out validation images, and fine-tunes it from the
    # original weights with the whole budget (the one-shot heuristics' schedule). 0: choose with
    # the episodes' weights and fine-tune on from them.
    rerank_steps: int = 50
    # ... and the learnt mask replaces the start only when McNemar's paired z on those images
    # exceeds this: two masks within a few images of each other are a tie, and a tie keeps the
    # start (at 0.15x MACs on vgg-small a 0.02 pp held-out lead became a 0.2 pp test loss).
    rerank_z: float = 2.0
    # What the policy decides: every filter's keep ("filters", a Bernoulli per filter) or each
    # unit's keep ratio ("allocation", a Gaussian per unit; filters ranked by the start's
    # scores; needs init=global-magnitude), with exploration width ``sigma`` in logit units.
    action: JointAction = "allocation"
    sigma: float = 0.25
    # Before the episodes, let the uniform allocation (the same ranking) challenge global
    # magnitude's mask by the final choice's rule; the winner is where the policy starts.
    # Global ranking starves some units that uniform keeps (resnet20 at 0.3x MACs: +0.27 pp).
    start_uniform: bool = True

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "joint.steps", f"must be >= 1, got {self.steps}")
        _check(self.rerank_steps >= 0, "joint.rerank_steps", "must be >= 0")
        _check(-100 <= self.rerank_z <= 100, "joint.rerank_z", "must be in [-100, 100]")
        _check(0 < self.sigma <= 10, "joint.sigma", "must be in (0, 10]")
        _check_choice(self.action, JointAction, "joint.action")
        _check(
            self.action == "filters" or self.init == "global-magnitude",
            "joint.action",
            "allocation ranks filters by the start's scores: needs joint.init=global-magnitude",
        )
        _check(self.samples >= 2, "joint.samples", "must be >= 2 (a baseline needs two)")
        _check(self.images >= 1, "joint.images", f"must be >= 1, got {self.images}")
        _check(self.lr > 0, "joint.lr", f"must be > 0, got {self.lr}")
        _check(0 < self.temperature <= 100, "joint.temperature", "must be in (0, 100]")
        _check_choice(self.signal, JointSignal, "joint.signal")
        _check_choice(self.init, JointInit, "joint.init")
        _check_choice(self.train_mask, JointTrainMask, "joint.train_mask")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """The whole search: strategy, fine-tuning, agent, reward, rollouts, joint settings."""

    seed: int = 0
    # How the search walks the network; "auto": see :meth:`search_strategy`.
    strategy: SearchStrategy = "auto"
    order: WalkOrder = "forward"  # layerwise unit order ("macs": largest MAC share first)
    exclude: tuple[str, ...] = ()  # module names never pruned (the classifier never is)
    min_keep: float = 0.1  # per unit: >= 1 -> channel count, < 1 -> fraction of channels
    finetune_steps: int = 100  # SGD steps after each unit
    finetune_lr: float = 0.01
    final_finetune_epochs: float = 1.0
    batch_size: int = 128
    weight_decay: float = 5e-4
    latency_runs: int = 20
    # Kept channels per unit rounded to a multiple of round_to (never below min_keep; a unit may
    # stay whole): CPU kernels compute output channels in vector blocks, so such widths can run
    # faster per channel (bench/latency_aware.py measures whether it pays). 1: no rounding.
    round_to: int = 1
    # NHWC layout for rollouts, fine-tuning and measurement: oneDNN's CPU pooling and conv
    # kernels are faster on NHWC than NCHW, with the same accuracies (figures in
    # docs/BENCHMARKS.md, from bench/layout.py). The pruned model files are layout-free.
    channels_last: bool = True
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    joint: JointConfig = dataclasses.field(default_factory=JointConfig)

    def search_strategy(self, distributed: bool = False) -> StrategyName:
        """The strategy that runs. ``auto``: the joint search for MAC and latency budgets in
        one process (above the layer-wise walk at every MAC target of docs/RESULTS.md, in a
        fraction of its time, and at the walk's own latency targets in docs/LATENCY.md); the
        layer-wise walk otherwise: accuracy-bounded and AMC modes, filter efficiency,
        ``reward.project`` (settings the walk reads), torchrun."""
        if self.strategy != "auto":
            return self.strategy
        r = self.reward
        plain = r.mode == "budget" and r.efficiency in ("macs", "latency") and not r.project
        return "joint" if plain and not distributed else "layerwise"

    def __post_init__(self) -> None:
        _check_choice(self.strategy, SearchStrategy, "strategy")
        _check(
            self.strategy != "joint" or self.reward.mode == "budget",
            "strategy",
            "joint needs a MAC target (--target-macs) or a latency target (--target-latency)",
        )
        _check_choice(self.order, WalkOrder, "order")
        _check(self.min_keep > 0, "min_keep", f"must be > 0, got {self.min_keep}")
        _check(self.finetune_steps >= 0, "finetune_steps", "must be >= 0")
        _check(self.finetune_lr > 0, "finetune_lr", "must be > 0")
        _check(self.final_finetune_epochs >= 0, "final_finetune_epochs", "must be >= 0")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.latency_runs >= 3, "latency_runs", "must be >= 3")
        self._check_bounds()

    def final_steps(self, n_train: int) -> int:
        """SGD steps of the final fine-tune on ``n_train`` training images (the whole split,
        not a rank's share): ``round(final_finetune_epochs * ceil(n_train / batch_size))``."""
        return round(self.final_finetune_epochs * math.ceil(n_train / self.batch_size))

    def _check_bounds(self) -> None:
        """Upper bounds of the values that size allocations or loops (the joint ones too)."""
        _range(self.seed, 0, MAX_SEED, "seed")
        _range(self.min_keep, 0, 1e6, "min_keep")
        _range(self.finetune_steps, 0, MAX_STEPS, "finetune_steps")
        _range(self.finetune_lr, 0, 100, "finetune_lr")
        _range(self.final_finetune_epochs, 0, 10_000, "final_finetune_epochs")
        _range(self.batch_size, 1, MAX_BATCH, "batch_size")
        _range(self.latency_runs, 3, 10_000, "latency_runs")
        _range(self.round_to, 1, 1024, "round_to")
        _range(self.joint.steps, 1, MAX_STEPS, "joint.steps")
        _range(self.joint.rerank_steps, 0, MAX_STEPS, "joint.rerank_steps")
        _range(self.joint.samples, 2, MAX_SAMPLES, "joint.samples")
        _range(self.joint.images, 1, MAX_IMAGES, "joint.images")
        _range(self.joint.lr, 0, 100, "joint.lr")
