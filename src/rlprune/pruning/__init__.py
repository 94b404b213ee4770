"""Surgery: what is coupled, how to mask it, how to cut it, how to measure it.

This package never imports the agent (:mod:`rlprune.agent`); :mod:`rlprune.env` connects them.
"""

from rlprune.pruning.masking import UnitMask
from rlprune.pruning.metrics import (
    LatencyStats,
    MacModel,
    UnitMacs,
    count_macs_params,
    file_size,
    measure_latency,
)
from rlprune.pruning.surgery import filter_l1, remove_channels
from rlprune.pruning.units import Unit, build_graph, classifier_names, find_units, resolve_min_keep

__all__ = [
    "LatencyStats",
    "MacModel",
    "Unit",
    "UnitMacs",
    "UnitMask",
    "build_graph",
    "classifier_names",
    "count_macs_params",
    "file_size",
    "filter_l1",
    "find_units",
    "measure_latency",
    "remove_channels",
    "resolve_min_keep",
]
