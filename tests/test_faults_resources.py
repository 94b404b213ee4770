"""Resource limits: the rollout activation cache obeys ``rollout.cache_mb`` end to end.

(Data loading has no memory cap: every dataset is decoded fully into memory.)
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest

from rlprune.data import load_dataset
from tests.faultkit import cli_env, prune_argv, report_masks

pytestmark = pytest.mark.faults


def test_tiny_cache_cap_logs_fp16_and_subsampling(digits_baseline: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = prune_argv(digits_baseline, out, "--set", "rollout.cache_mb=0.01")  # 10 KiB
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    fp16 = re.findall(r"prefix cache [\d.]+ MiB > cap 0 MiB: stored in fp16", proc.stderr)
    sub = re.findall(r"reward set subsampled to (\d+) images", proc.stderr)
    assert fp16, proc.stderr
    assert sub and all(10 <= int(n) < 144 for n in sub), sub  # 144 = rollout.reward_set
    assert len(report_masks(out)) == 6  # and the search still finishes


@pytest.mark.faults
def test_data_memory_cap_subsamples_training_split(caplog: pytest.LogCaptureFixture) -> None:
    """`--data-max-mb`: the float32 training tensor stays under the cap; val/test are whole."""
    caplog.set_level(logging.INFO)
    full = load_dataset("digits")
    capped = load_dataset("digits", max_mb=0.1)
    per_image = 4 * capped.train.images[0].numel()
    assert len(capped.train) == int(0.1 * 2**20 // per_image) < len(full.train)
    assert capped.train.images.numel() * 4 <= 0.1 * 2**20
    assert len(capped.val) == len(full.val) and len(capped.test) == len(full.test)
    assert f"cap: using {len(capped.train)}" in caplog.text
