"""``rlprune report``: plots without pyplot, and no plotting library loaded by ``import rlprune``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rlprune.report import write_report


def _fake_run(root: Path) -> Path:
    base = {"val_acc": 90.0, "test_acc": 89.5, "macs": 2e6, "params": 3e4}
    units = [
        {
            "unit": f"features.{i}",
            "reward_curve": [-0.5, 0.1 * i, 0.2],
            "channels_before": 16,
            "channels_after": 16 - 4 * i,
            "chosen": "sampled",
            "reward": 0.2,
            "rollout_acc": 88.0,
            "val_acc": 89.0 - i,
            "macs": 2e6 - 4e5 * i,
        }
        for i in range(3)
    ]
    pruned = {**base, "val_acc": 87.0, "macs": units[-1]["macs"]}
    report = {
        "baseline": base,
        "pruned": pruned,
        "units": units,
        "config": {"reward": {"mode": "accuracy"}},
        "model": {"name": "vgg-small"},
    }
    root.mkdir()
    (root / "report.json").write_text(json.dumps(report))
    return root


def test_report_writes_markdown_and_plots(tmp_path: Path) -> None:
    root = _fake_run(tmp_path / "run")
    md = write_report(root).read_text()
    for name in ("reward_curves.png", "filters.png", "keep_ratio.png", "walk.png"):
        data = (root / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
        assert f"![{name}]({name})" in md
    assert "| MACs | 2.00M | 1.20M | 1.67x smaller |" in md


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_import_rlprune_loads_no_plotting_library() -> None:
    # Importing a library must not pick a matplotlib backend for its caller (nor pay for it).
    _run(
        "import sys, rlprune, rlprune.report, rlprune.cli\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )


def test_plotting_uses_no_pyplot(tmp_path: Path) -> None:
    root = _fake_run(tmp_path / "run")
    _run(
        "import sys\nfrom rlprune.report import write_report\n"
        f"write_report({str(root)!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )


def test_a_measurement_without_a_test_split_round_trips() -> None:
    from rlprune.outputs import Measurement

    m = Measurement(val_acc=90.0, test_acc=None, macs=10, params=2, threads=1)
    assert "test_acc" not in m.to_dict()  # left out, as every unmeasured field
    assert Measurement.from_dict(m.to_dict()) == m  # a resumed run reads its baseline back
