"""bench/results.py collect: summary.json and the tables are exactly what the cells hold."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "results.py"


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_results", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DOCS", tmp_path / "results")
    return mod


def _cell(
    docs: Path, model: str, method: str, target: float, seed: int, acc: float, **extra: Any
) -> None:
    row: dict[str, Any] = {
        "test_acc": acc,
        "seed": seed,
        "search_s": 10.0 * (seed + 1),
        "finetune_s": 5.0,
        "macs_within_tolerance": method != "late",
        "cpu": "Test CPU (avx2)",
        **extra,  # a cell older than the "device" entry ran on the CPU
    }
    path = docs / "cells" / model / method / f"t{target:g}_s{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": {}, "row": row}))


def test_collect_reports_every_seed_and_the_standard_error(
    results: ModuleType, tmp_path: Path
) -> None:
    cfg: dict[str, Any] = {
        "models": {"m": {}},
        "targets": [0.5, 0.3],
        "seeds": [0, 1, 2],
        "methods": ["rl", "late"],
    }
    docs = tmp_path / "results"
    for seed, acc in enumerate([90.0, 91.0, 92.0]):
        _cell(docs, "m", "rl", 0.5, seed, acc)
    _cell(docs, "m", "late", 0.5, 0, 93.0, device="cuda: Test GPU")  # one seed, off target
    _cell(docs, "m", "rl", 0.5, 7, 50.0)  # a seed results.yaml does not name: ignored
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# R\n{results.START}\nold\n{results.END}\nanalysis\n")
    results.cmd_collect(cfg)
    text = doc.read_text()
    assert "old" not in text and text.endswith(f"{results.END}\nanalysis\n")
    assert "| rl | 91.00" in text
    summary = json.loads((docs / "summary.json").read_text())
    assert summary["results"] == {"m": {"0.5": {"rl": [90.0, 91.0, 92.0], "late": [93.0]}}}
    assert summary["seeds"]["m"]["0.5"]["rl"] == [0, 1, 2]
    assert summary["machine"] == ["Test CPU (avx2)"]
    assert summary["devices"] == {"m": ["cpu (3 cells)", "cuda: Test GPU (1 cell)"]}
    assert "python bench/results.py run --model m --seed 2" in summary["commands"]
    table = (docs / "tables.md").read_text()
    se = 1.0 / math.sqrt(3)  # stdev of 90, 91, 92 is 1
    assert f"| rl | 91.00 ± {se:.2f} (n=3) | — |" in table
    assert "| late | **93.00 (n=1)** † ‡ | — |" in table  # off target, on another device
    assert "‡ some of its seeds ran on another device" in table and "0.5×: mostly cpu" in table
    assert "| rl | 20 / 5 | — |" in table  # mean search / fine-tune seconds
    assert "CPUs: Test CPU (avx2). Devices: cpu (3 cells); cuda: Test GPU (1 cell)" in table


def test_the_device_mark_stays_with_its_model(results: ModuleType, tmp_path: Path) -> None:
    cfg: dict[str, Any] = {
        "models": {"a": {}, "b": {}},
        "targets": [0.5, 0.3],
        "seeds": [0],
        "methods": ["x", "y"],
    }
    docs = tmp_path / "results"
    for method in ("x", "y"):
        _cell(docs, "a", method, 0.5, 0, 90.0)
        _cell(docs, "a", method, 0.3, 0, 90.0)
        _cell(docs, "b", method, 0.5, 0, 90.0)
    _cell(docs, "a", "z", 0.5, 0, 90.0)  # not a method of the config: not in the table
    (docs / "cells" / "a" / "x" / "t0.3_s0.json").unlink()
    _cell(docs, "a", "x", 0.3, 0, 91.0, device="cuda: G")
    table = results.tables(cfg, results._cells(cfg))
    a, b = table.split("### b")
    assert "| x | **90.00 (n=1)** | **91.00 (n=1)** ‡ |" in a
    assert a.count("‡") == 2 and "0.3×: mostly cpu" in a and "0.5×: mostly" not in a
    assert "‡" not in b


def test_a_method_built_on_the_rl_searches_brings_them_along(results: ModuleType) -> None:
    configured = ["rl-joint", "rl-layerwise", "l1-uniform", "random-search"]
    assert results._with_rl_searches(["l1-uniform"], configured) == ["l1-uniform"]
    got = results._with_rl_searches(["random-search"], configured)
    assert got == ["rl-joint", "rl-layerwise", "random-search"]
