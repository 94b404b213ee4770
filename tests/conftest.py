"""Shared fixtures; the fault-injection helpers live in :mod:`tests.faultkit`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faultkit import train_digits_checkpoint


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trained width-0.25 vgg-small digits checkpoint, shared by the fault modules."""
    return train_digits_checkpoint(tmp_path_factory.mktemp("digits-base") / "model.pt")
