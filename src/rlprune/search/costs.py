"""The latency table a search prices masks with, and its predictions for the report.

With ``reward.efficiency=latency`` the search needs a :class:`~rlprune.pruning.LatencyLUT`:
the file ``reward.latency_table`` (made by ``rlprune profile``, possibly on the deployment
machine), checked against the model, or one profiled here on the fly. Either way it is stored
in the run folder (``state/latency.json``), so a resumed run prices masks as the killed one did.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from rlprune.config import PruneConfig
from rlprune.errors import ConfigError, RlpruneError
from rlprune.machine import malloc_mode
from rlprune.pruning import find_units
from rlprune.pruning.latency import LatencyLUT
from rlprune.pruning.profile import profile_latency
from rlprune.pruning.timing import RoundTimer
from rlprune.runstate import RunDir

__all__ = ["REPORT_BATCHES", "latency_report", "search_lut"]

log = logging.getLogger(__name__)

REPORT_BATCHES = (1, 64)  # the report's predicted-vs-measured rows
REPORT_ROUNDS = 3  # alternating rounds of the baseline and the pruned model
_STATE = "state/latency.json"


def search_lut(
    model: nn.Module, example: torch.Tensor, cfg: PruneConfig, run: RunDir, distributed: bool
) -> LatencyLUT | None:
    """The search's latency table (None unless ``reward.efficiency=latency``).

    Raises:
        ConfigError: the table is unreadable or made for another model (one line), or an
            on-the-fly profile was asked for under torchrun (ranks would time differently).
    """
    rc = cfg.reward
    if rc.efficiency != "latency":
        return None
    stored = run.read_json(_STATE)
    if stored is not None:
        try:
            lut = LatencyLUT.from_dict(stored)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{run.root / _STATE} is corrupt ({str(e)[:120]})") from e
        where = str(run.root / _STATE)
    elif rc.latency_table is not None:
        lut, where = LatencyLUT.load(rc.latency_table), rc.latency_table
    elif distributed:
        raise ConfigError(
            "reward.latency_table: under torchrun give a table (rlprune profile) so every "
            "process prices masks alike"
        )
    else:
        log.info("profiling latency (batch %d) for the reward", rc.latency_batch)
        batches = sorted({rc.latency_batch, *REPORT_BATCHES})
        lut = profile_latency(model, example, batches, rc.latency_threads or None)
        where = "(profiled on the fly)"
    units = {u.name: u.channels for u in find_units(model, example)}
    lut.check_fits(units, tuple(example.shape[1:]), where)
    lut.model(rc.latency_batch)  # has the batch the reward prices
    if stored is None:
        run.write_json(_STATE, lut.to_dict())
    log.info(
        "latency table %s: %s, %s, %d thread(s), %s clock, batches %s", where,
        lut.machine.get("cpu", "?"), lut.runtime, lut.threads, lut.clock, sorted(lut.tables),
    )  # fmt: skip
    timed, here = lut.machine.get("malloc", "system"), malloc_mode()
    if timed != here:  # the allocator moved resnet20's batch-64 time by ~30% (docs/LATENCY.md)
        log.warning(
            "latency table %s was timed under %s malloc, this process runs %s malloc: the "
            "report's measured latencies will not match its predictions (--steady-malloc, or "
            "MALLOC_MMAP_THRESHOLD_, on both or neither)", where, timed, here,
        )  # fmt: skip
    return lut


def latency_report(
    lut: LatencyLUT,
    base: nn.Module,
    pruned: nn.Module,
    pruned_counts: dict[str, int],
    example: torch.Tensor,
    runs: int,
) -> dict[str, Any]:
    """Predicted vs measured latency of the baseline and the pruned model at batch 1 and 64
    (those the table has), measured as the table was made (threads, runtime, clock), the two
    models in :data:`REPORT_ROUNDS` alternating rounds (:class:`RoundTimer`).

    ``ratio`` sets the pruned model's latency over the baseline's, predicted against measured:
    what a ``--target-latency`` budget constrains, and free of how fast the machine runs just
    now (on a shared machine that moves absolute batch-1 times by tens of percent between
    minutes, docs/LATENCY.md)."""
    rows = []
    for b in REPORT_BATCHES:
        if b not in lut.tables:
            continue
        lm = lut.model(b)
        predicted = {"baseline": lm.total, "pruned": lm(pruned_counts)}
        try:
            timer = RoundTimer({"baseline": base, "pruned": pruned}, example, b, lut.threads,
                               lut.runtime, runs, lut.clock)  # fmt: skip
            for _ in range(REPORT_ROUNDS):
                timer.round()
            measured = timer.medians()
        except RlpruneError as e:
            log.warning("latency at batch %d not measured: %s", b, e)
            continue
        row: dict[str, Any] = {"batch": b}
        for key, m in measured.items():
            row[key] = {"predicted_ms": predicted[key], "measured_ms": m,
                        "error": predicted[key] / m - 1}  # fmt: skip
        p, m = (predicted["pruned"] / predicted["baseline"],
                measured["pruned"] / measured["baseline"])  # fmt: skip
        row["ratio"] = {"predicted": p, "measured": m, "error": p / m - 1}
        rows.append(row)
    return {
        "cpu": lut.machine.get("cpu"),
        "runtime": lut.runtime,
        "threads": lut.threads,
        "clock": lut.clock,
        "malloc": lut.machine.get("malloc", "system"),  # the table's allocator
        "measured_malloc": malloc_mode(),  # this process's, which the measurements ran under
        "rows": rows,
    }
