"""Helpers of the fault-injection tests (``pytest -m faults``, tests/test_faults_*.py).

Every CLI run is a real ``python -m rlprune`` subprocess with ``OMP_NUM_THREADS=1``: on a
loaded 2-core machine one intra-op thread is several times faster than two that fight for the
cores, and the masks do not depend on it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# Tiny search settings: a width-0.25 vgg-small on `digits` (6 units) finishes in a few seconds.
FAST_PRUNE = [
    "--set",
    "agent.updates=4",
    "--set",
    "agent.samples=4",
    "--set",
    "finetune_steps=5",
    "--set",
    "final_finetune_epochs=0.1",
    "--set",
    "latency_runs=3",
    "--set",
    "rollout.reward_set=144",
]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env.pop("RLPRUNE_DATA", None)
    return env


def rlprune_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "rlprune", *map(str, args)]


def run_cli(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``rlprune ARGS`` to completion; stdout/stderr captured as text."""
    return subprocess.run(
        rlprune_argv(*args), capture_output=True, text=True, env=cli_env(), timeout=timeout
    )


def run_cli_capped(
    *args: str | Path, mem_mb: int = 1536, fsize: int | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``rlprune ARGS`` with its address space capped at ``mem_mb`` MiB (``RLIMIT_AS``) and,
    with ``fsize``, every file it writes capped at that many bytes (a full disk: writes fail
    with EFBIG). A regression that allocates what the input claims fails fast instead of
    eating the machine."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        rlprune_argv(*args),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
        preexec_fn=limit,
    )


def prune_argv(ckpt: Path, out: Path, *extra: str) -> list[str]:
    """``rlprune prune`` of ``ckpt`` on digits, accuracy-bounded, tiny settings."""
    return rlprune_argv(
        "prune",
        "--checkpoint",
        ckpt,
        "--dataset",
        "digits",
        "--out",
        out,
        "--max-acc-drop",
        "1",
        "--quiet",
        *FAST_PRUNE,
        *extra,
    )


def report_masks(out: Path) -> list[list[int]]:
    """The final per-unit masks: ``report.json`` ``units[*].kept``."""
    return [u["kept"] for u in json.loads((out / "report.json").read_text())["units"]]


def temp_files(root: Path) -> list[Path]:
    """Leftovers of interrupted atomic writes (``.NAME.XXXX.tmp``)."""
    return sorted(root.rglob("*.tmp"))


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A user error: exit 2, no traceback, one ``rlprune: error:`` line naming ``needles``."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("rlprune: error:")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run in-process torch work with one intra-op thread, restoring the count afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_digits_checkpoint(path: Path, width: float = 0.25, epochs: float = 2.0) -> Path:
    """Train a small vgg-small on ``digits`` and save it as a zoo checkpoint."""
    from rlprune.checkpoint import save_checkpoint
    from rlprune.config import TrainConfig
    from rlprune.data import load_dataset
    from rlprune.models import ModelSpec
    from rlprune.train import train

    with one_thread():
        torch.manual_seed(0)
        data = load_dataset("digits")
        spec = ModelSpec("vgg-small", 1, 10, data.input_size, width=width)
        model = spec.build()
        train(model, data, TrainConfig(epochs=epochs), progress=False)
    return save_checkpoint(path, model, spec)


def load_state_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a state file, or None if it is absent/mid-write."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # being replaced right now, or torn
        return None


def run_main(capsys: Any, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``rlprune ARGS`` in this process (``rlprune.cli.main``): for the many quick error cases.

    The same code path as the subprocess minus interpreter start-up (~2 s here); an exception
    that is not turned into an error line propagates and fails the test.
    """
    from rlprune.cli import main

    capsys.readouterr()
    with one_thread():
        rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, out, err)
