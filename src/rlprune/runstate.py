"""The run folder: config, metrics log and crash-safe search state (a killed run resumes).

Layout::

    RUN/rlprune-run.json   identity: config hash, input checkpoint and dataset fingerprints
    RUN/config.yaml        resolved config
    RUN/metrics.jsonl      one JSON object per event (rollout/..., train/..., eval/..., model/...)
    RUN/state/baseline.json  baseline measurements (computed once)
    RUN/state/model.pt     model after the last finished unit + walk progress (checkpoint format)
    RUN/state/agent.pt     agent + progress inside the current unit (after every policy update)
    RUN/state/final.pt     model after the final fine-tune

Every file is written atomically (temp + fsync + rename), so a kill at any moment leaves the
previous good state; a corrupt state file is reported and the previous good one is used. No
file is written through a symbolic link (:mod:`rlprune.safefs`), and :meth:`RunDir.claim`
refuses a folder that is not this run's (:mod:`rlprune.runfolder`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from rlprune.checkpoint import atomic_write, refusal_message
from rlprune.config import PruneConfig, config_from_dict, config_to_dict, load_yaml
from rlprune.errors import CheckpointError, ConfigError, RlpruneError
from rlprune.runfolder import RunIdentity, claim
from rlprune.safefs import open_append, refuse_link

__all__ = ["RunDir"]

log = logging.getLogger(__name__)

# Keys the search stores in each state file; a file without them is treated as corrupt.
_STATE_KEYS: dict[str, tuple[str, ...]] = {
    "model.pt": ("shapes", "state_dict", "records", "agent"),
    "agent.pt": ("unit", "progress", "agent"),
    "final.pt": ("state_dict",),
}


class RunDir:
    """Files of one search run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.state = self.root / "state"

    # ----------------------------------------------------------------- lifecycle
    def claim(self, identity: RunIdentity, resume: bool, overwrite: bool = False) -> bool:
        """Check (and on a fresh start create and mark) the folder; True when resuming.

        Raises:
            RlpruneError: the folder is not this run's to write (see :func:`runfolder.claim`).
        """
        return claim(self.root, identity, resume, overwrite)

    def start(self, cfg: PruneConfig, resume: bool) -> PruneConfig:
        """Create the folder (or check it on resume) and write ``config.yaml``.

        Raises:
            ConfigError: resuming with a different config, or an existing run without --resume.
        """
        cfg_path = self.root / "config.yaml"
        refuse_link(self.state)  # a planted state -> elsewhere link
        if cfg_path.exists():
            if not resume:
                raise ConfigError(
                    f"{self.root} already holds a run: pass --resume to continue it, "
                    "or choose a new --out"
                )
            try:
                text = cfg_path.read_text()
                stored = config_from_dict(PruneConfig, load_yaml(text, str(cfg_path)))
            except (OSError, yaml.YAMLError, TypeError, ValueError) as e:
                raise ConfigError(
                    f"{cfg_path} is unreadable or corrupt ({type(e).__name__}); "
                    "start a new run with a new --out"
                ) from e
            if stored != cfg:
                raise ConfigError(
                    f"{self.root} was started with a different config; resume without "
                    "--config/--set changes, or choose a new --out"
                )
            self._tidy_after_crash()
            return stored
        try:
            self.state.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RlpruneError(f"cannot create run folder {self.root}: {e.strerror}") from e
        text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
        atomic_write(cfg_path, lambda f: f.write(text), mode="w")
        return cfg

    def _tidy_after_crash(self) -> None:
        """On resume: delete temp files a killed writer left, end a torn metrics line."""
        for folder in (self.root, self.state):
            for tmp in folder.glob(".*.tmp"):  # atomic_write's ".NAME.XXXX.tmp"
                log.info("removing %s, left by an interrupted write", tmp)
                tmp.unlink(missing_ok=True)
        metrics = self.root / "metrics.jsonl"
        refuse_link(metrics)
        if metrics.exists() and metrics.stat().st_size:
            fd = os.open(metrics, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb+") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # the next record starts on its own line

    # ----------------------------------------------------------------- metrics
    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed; a torn last line is skipped on read)."""
        with open_append(self.root / "metrics.jsonl") as f:
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
        path, prev = self.state / name, self.state / f"{name}.prev"
        for p in (self.state, path, prev):
            refuse_link(p)
        if path.exists():  # keep the previous good copy in case this one is torn later
            path.replace(prev)
        atomic_write(path, lambda f: torch.save(obj, f))

    def load_state(
        self, name: str, check: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any] | None:
        """Load ``state/NAME``; falls back to the previous good copy if it is corrupt.

        Loads with ``weights_only=True``: a file that needs arbitrary code is refused, never
        run. A file that is torn, unsafe, lacks the keys the search stores in it, or fails
        ``check`` (which raises :class:`CheckpointError`: e.g. shapes that do not fit the
        model) is skipped with one warning line.
        """
        for path in (self.state / name, self.state / f"{name}.prev"):
            if not path.exists():
                continue
            then = "trying the previous one" if path.name == name else "ignoring it"
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                log.warning("%s; %s", refusal_message(path, e, "state file"), then)
                continue
            except Exception as e:  # torn zip: RuntimeError, EOFError, ...
                log.warning("state file %s is corrupt (%s); %s", path, _first_line(e), then)
                continue
            missing = (
                [k for k in _STATE_KEYS.get(name, ()) if k not in obj]
                if isinstance(obj, dict)
                else ["<a dict>"]
            )
            if missing:
                log.warning("state file %s lacks %s; %s", path, ", ".join(missing), then)
                continue
            try:
                if check is not None:
                    check(obj)
            except CheckpointError as e:
                log.warning("state file %s does not fit this run (%s); %s", path, e, then)
                continue
            return obj
        return None


def _first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (torch's unpickling errors run to pages)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
