"""rlprune: compress PyTorch CNNs with a reinforcement-learning filter-pruning agent.

Quick start::

    import rlprune
    data = rlprune.load_dataset("fashion-mnist")
    model, spec, _ = rlprune.load_model("runs/base/model.pt")
    result = rlprune.prune(model, data.train, data.val, rlprune.PruneConfig(), test=data.test,
                           out_dir="runs/pruned", spec=spec)
"""

from rlprune.checkpoint import load_model, save_checkpoint
from rlprune.config import AgentConfig, PruneConfig, RewardConfig, RolloutConfig, TrainConfig
from rlprune.data import DatasetSplits, Split, load_dataset
from rlprune.errors import RlpruneError
from rlprune.models import MODELS, ModelSpec, build_model
from rlprune.search import PruneResult, prune

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "AgentConfig",
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
    "load_dataset",
    "load_model",
    "prune",
    "save_checkpoint",
]
