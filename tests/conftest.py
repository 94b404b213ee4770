"""Shared fixtures; the fault-injection helpers live in :mod:`tests.faultkit`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.faultkit import cli_env, prune_argv, train_digits_checkpoint


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tests use tiny tensors: one intra-op thread is faster and steadier on a busy 2-core
    machine than two that fight for the cores (subprocesses get OMP_NUM_THREADS=1 too)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _no_thread_leak() -> Iterator[None]:
    """One thread again after every test, so that no test's count leaks into the fixtures and
    tests after it: with two pytest workers on two cores, a second OpenMP thread spins at every
    barrier while the other worker holds the core (a 4-second test ran for over ten minutes)."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trained width-0.25 vgg-small digits checkpoint, shared by the fault modules."""
    return train_digits_checkpoint(tmp_path_factory.mktemp("digits-base") / "model.pt")


@pytest.fixture(scope="module")
def finished_run(digits_baseline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``rlprune prune`` run folder on the digits baseline (one per test module:
    the modules that tamper with it get their own)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = subprocess.run(
        prune_argv(digits_baseline, out), capture_output=True, text=True, env=cli_env()
    )
    assert proc.returncode == 0, proc.stderr
    return out
