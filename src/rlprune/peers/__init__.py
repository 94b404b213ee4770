"""Peer methods for the RL-vs-heuristics comparison (``rlprune compare``).

- ``tp-iterative`` (:func:`tp_iterative`): Torch-Pruning's own iterative pruner (DepGraph, Fang
  et al. CVPR 2023), uniform ratio solved for the MAC target, fine-tuned between its steps on the
  RL search's schedule.
- ``random-search`` (:func:`random_search`): EagleEye (Li et al. ECCV 2020), random per-unit
  allocations at the MAC target scored by adaptive-BN accuracy on the reward set, the best one
  fine-tuned with the whole budget.

Both take the same baseline and equal fine-tune budget as every other method, never see the
test split, leave the input model untouched and return a typed :class:`PeerResult`.
"""

from rlprune.peers.common import PeerResult, RandomSearchResult, TpIterativeResult
from rlprune.peers.eagleeye import random_search
from rlprune.peers.torchpruning import tp_iterative

__all__ = [
    "PEERS",
    "PeerResult",
    "RandomSearchResult",
    "TpIterativeResult",
    "random_search",
    "tp_iterative",
]

PEERS: tuple[str, ...] = ("tp-iterative", "random-search")
"""Method names for ``rlprune compare``'s registry."""
