"""Surgery: what is coupled, how important each filter is, how to mask it, cut it, measure it.

This package never imports the agent (:mod:`rlprune.agent`); :mod:`rlprune.env` connects them.
"""

from rlprune.pruning.importance import (
    ActivationStats,
    activation_statistics,
    bn_gamma,
    bn_scale,
    filter_l1,
    filter_l2,
    group_magnitude,
    group_taylor,
)
from rlprune.pruning.masking import UnitMask
from rlprune.pruning.metrics import MacModel, UnitMacs, count_macs_params, file_size
from rlprune.pruning.surgery import remove_channels
from rlprune.pruning.timing import LatencyStats, measure_latency, measure_latency_paired
from rlprune.pruning.units import Unit, build_graph, classifier_names, resolve_min_keep, trace_units
from rlprune.pruning.verify import check_unit, find_units, skipped_units

__all__ = [
    "ActivationStats",
    "LatencyStats",
    "MacModel",
    "Unit",
    "UnitMacs",
    "UnitMask",
    "activation_statistics",
    "bn_gamma",
    "bn_scale",
    "build_graph",
    "check_unit",
    "classifier_names",
    "count_macs_params",
    "file_size",
    "filter_l1",
    "filter_l2",
    "find_units",
    "group_magnitude",
    "group_taylor",
    "measure_latency",
    "measure_latency_paired",
    "remove_channels",
    "resolve_min_keep",
    "skipped_units",
    "trace_units",
]
