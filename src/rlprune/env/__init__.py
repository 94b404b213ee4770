"""The environment: the one package that connects surgery (:mod:`rlprune.pruning`) with
decisions (:mod:`rlprune.agent`, :mod:`rlprune.reward`).

``layerwise``: one unit at a time (:class:`PruningEnv`); ``joint``: every unit at once
(:class:`JointEnv`). Both score masks on the reward set (validation images, never the test
split) and turn accuracies and MACs into rewards.
"""

from rlprune.env.joint import JointEnv
from rlprune.env.layerwise import PruningEnv, RolloutBatch, unit_budget

__all__ = ["JointEnv", "PruningEnv", "RolloutBatch", "unit_budget"]
