"""Typed state of a search: progress inside a unit, the decision taken, the record kept.

Each type serialises to plain types and tensors (``to_state``/``from_state``), the form the
run folder stores with ``torch.save`` and loads back with ``weights_only=True`` on resume;
:class:`UnitRecord` also serialises to JSON for ``report.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Decision", "UnitProgress", "UnitRecord"]


@dataclass(frozen=True)
class Decision:
    """The mask chosen for a unit and how it scored on the reward set.

    ``chosen``: ``best`` (luckiest sample), ``deterministic`` (``p > 0.5``), either with
    ``+projected`` (AMC-style projection onto the unit's MAC budget), ``unpruned`` (no mask
    within bounds) or ``reverted`` (cut undone after its fine-tune).
    """

    mask: torch.Tensor  # [C] 0/1
    chosen: str
    reward: float
    acc: float | None
    det_reward: float
    det_acc: float
    det_kept: list[int]

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Decision:
        return cls(**d)


@dataclass
class UnitProgress:
    """The agent's training inside one unit (saved after every policy update)."""

    update: int = 0
    best_reward: float = -math.inf
    best_mask: torch.Tensor | None = None  # [C]
    best_acc: float | None = None
    since_best: int = 0
    curve: list[float] = field(default_factory=list)  # mean reward per update
    max_curve: list[float] = field(default_factory=list)  # max reward per update
    stopped: bool = False  # early stop: converged policy or reward plateau
    decided: Decision | None = None
    scored: int = 0  # rollouts run on the reward set (kept across a resume)
    reused: int = 0  # rollouts answered from the memo

    def observe(self, rewards: torch.Tensor, accs: torch.Tensor, masks: torch.Tensor) -> None:
        """Track the best sampled mask of an update: ``rewards``/``accs [K]``, ``masks [K, C]``."""
        k = int(torch.argmax(rewards))
        if float(rewards[k]) > self.best_reward:
            self.best_reward, self.best_acc = float(rewards[k]), float(accs[k])
            self.best_mask = masks[k].clone()
            self.since_best = 0
        else:
            self.since_best += 1

    def to_state(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["decided"] = None if self.decided is None else self.decided.to_state()
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> UnitProgress:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("decided") is not None:
            kw["decided"] = Decision.from_state(kw["decided"])
        return cls(**kw)


@dataclass(frozen=True)
class UnitRecord:
    """What the walk did to one unit (a row of ``report.json``'s ``units``)."""

    unit: str
    producers: list[str]
    consumers: list[str]
    channels_before: int
    channels_after: int
    kept: list[int]
    chosen: str
    reward: float
    rollout_acc: float | None
    det_reward: float
    det_acc: float
    det_kept: list[int]
    updates: int
    rollouts_scored: int
    rollouts_reused: int
    reward_curve: list[float]
    reward_max_curve: list[float]
    # the unit's budget (budget modes): MACs, or predicted ms under a latency budget (the name
    # predates latency budgets; report.json files keep it)
    budget_macs: float | None
    finetune_loss: float
    val_acc: float
    macs: int
    params: int
    reward_set_stderr: float
    agent_s: float  # wall seconds of this process (a resumed unit counts its resumed part)
    finetune_s: float
    # reward of the deterministic policy before any learning (joint: its projected mask on the
    # reward set), so the report shows whether the policy improved; None where not measured
    det_reward_start: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitRecord:
        return cls(**d)
