"""The run folder: config, metrics log and crash-safe search state (issue 4 item 8, issue 7).

Layout::

    RUN/config.yaml        resolved config
    RUN/metrics.jsonl      one JSON object per event (rollout/..., train/..., eval/..., model/...)
    RUN/state/baseline.json  baseline measurements (computed once)
    RUN/state/model.pt     model after the last finished unit + walk progress (checkpoint format)
    RUN/state/agent.pt     agent + progress inside the current unit (after every policy update)
    RUN/state/final.pt     model after the final fine-tune

Every file is written atomically (temp + fsync + rename), so a kill at any moment leaves the
previous good state; a corrupt state file is reported and the previous good one is used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from rlprune.checkpoint import atomic_write
from rlprune.config import PruneConfig, config_from_dict, config_to_dict
from rlprune.errors import CheckpointError, ConfigError, RlpruneError

__all__ = ["RunDir"]

log = logging.getLogger(__name__)


class RunDir:
    """Files of one search run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.state = self.root / "state"

    # ----------------------------------------------------------------- lifecycle
    def start(self, cfg: PruneConfig, resume: bool) -> PruneConfig:
        """Create the folder (or check it on resume) and write ``config.yaml``.

        Raises:
            ConfigError: resuming with a different config, or an existing run without --resume.
        """
        cfg_path = self.root / "config.yaml"
        if cfg_path.exists():
            if not resume:
                raise ConfigError(
                    f"{self.root} already holds a run: pass --resume to continue it, "
                    "or choose a new --out"
                )
            stored = config_from_dict(PruneConfig, yaml.safe_load(cfg_path.read_text()))
            if stored != cfg:
                raise ConfigError(
                    f"{self.root} was started with a different config; resume without "
                    "--config/--set changes, or choose a new --out"
                )
            return stored
        try:
            self.state.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RlpruneError(f"cannot create run folder {self.root}: {e.strerror}") from e
        text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
        atomic_write(cfg_path, lambda f: f.write(text), mode="w")
        return cfg

    # ----------------------------------------------------------------- metrics
    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed and fsynced)."""
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete lines of ``metrics.jsonl`` (a torn last line is skipped)."""
        path = self.root / "metrics.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipped a torn line in %s", path)
        return out

    # ----------------------------------------------------------------- json / tensors
    def write_json(self, name: str, obj: Any) -> Path:
        text = json.dumps(obj, indent=2)
        return atomic_write(self.root / name, lambda f: f.write(text), mode="w")

    def read_json(self, name: str) -> Any | None:
        path = self.root / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is corrupt ({e}); delete it to recompute") from e

    def save_state(self, name: str, obj: dict[str, Any]) -> None:
        """Save a dict of plain types and tensors to ``state/NAME`` (weights_only-loadable)."""
        path = self.state / name
        if path.exists():  # keep the previous good copy in case this one is torn later
            path.replace(self.state / f"{name}.prev")
        atomic_write(path, lambda f: torch.save(obj, f))

    def load_state(self, name: str) -> dict[str, Any] | None:
        """Load ``state/NAME``; falls back to the previous good copy if it is corrupt."""
        for path in (self.state / name, self.state / f"{name}.prev"):
            if not path.exists():
                continue
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                log.warning("state file %s is corrupt (%s); trying the previous one", path, e)
                continue
            if isinstance(obj, dict):
                return obj
        return None
