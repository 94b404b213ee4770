"""rlprune: compress PyTorch CNNs with a reinforcement-learning filter-pruning agent.

Quick start::

    import rlprune
    data = rlprune.load_dataset("fashion-mnist")
    model, spec, _ = rlprune.load_model("runs/base/model.pt")
    result = rlprune.prune(model, data.train, data.val, rlprune.PruneConfig(), test=data.test,
                           out_dir="runs/pruned", spec=spec)
    rlprune.fine_tune(result.model, data.train, steps=500, lr=0.01)   # optional: fine-tune more
    print(rlprune.evaluate(result.model, data.test))

The RL agent against heuristic pruners at equal MACs (``rlprune compare``)::

    cfg = rlprune.CompareConfig(checkpoint="runs/base/model.pt", dataset="fashion-mnist",
                                out="runs/compare", targets=(0.5,), seeds=1)
    print(rlprune.compare(cfg).markdown)
"""

__version__ = "0.1.0"  # first, so that any module may import it during package import

from rlprune.checkpoint import load_model, save_checkpoint
from rlprune.compare import CompareConfig, CompareResult, compare
from rlprune.config import AgentConfig, PruneConfig, RewardConfig, RolloutConfig, TrainConfig
from rlprune.data import DatasetSplits, Split, load_dataset
from rlprune.errors import RlpruneError
from rlprune.models import MODELS, ModelSpec, build_model
from rlprune.search import PruneResult, prune
from rlprune.train import evaluate, fine_tune, train

__all__ = [
    "MODELS",
    "AgentConfig",
    "CompareConfig",
    "CompareResult",
    "DatasetSplits",
    "ModelSpec",
    "PruneConfig",
    "PruneResult",
    "RewardConfig",
    "RlpruneError",
    "RolloutConfig",
    "Split",
    "TrainConfig",
    "build_model",
    "compare",
    "evaluate",
    "fine_tune",
    "load_dataset",
    "load_model",
    "prune",
    "save_checkpoint",
    "train",
]
