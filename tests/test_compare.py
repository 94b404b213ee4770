"""``compare`` end to end on digits: every method, matched MACs, equal fine-tune budget, and the
per-cell files that make a comparison resumable and let per-seed invocations add up."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from rlprune.checkpoint import save_checkpoint
from rlprune.compare import METHODS, CompareConfig, CompareResult, Method, compare
from rlprune.compare_cells import CellContext, MethodRun
from rlprune.config import PruneConfig, TrainConfig, load_config
from rlprune.data import load_dataset
from rlprune.errors import ConfigError
from rlprune.models import ModelSpec
from rlprune.train import train

# ``rlprune.compare`` the attribute is the function; the module is needed to patch its registry.
compare_module = importlib.import_module("rlprune.compare")

TINY = [
    "agent.updates=2",
    "agent.samples=4",
    "finetune_steps=2",
    "final_finetune_epochs=0.05",
    "rollout.reward_set=100",
    "latency_runs=3",
    "joint.steps=4",
]
MAC_TARGETED = (
    "l1-uniform", "global-magnitude", "taylor", "bn-scale", "tp-iterative", "random-search",
)  # fmt: skip


def _cfg(checkpoint: Path, out: Path, *extra: str, **kw: Any) -> CompareConfig:
    fields: dict[str, Any] = {"targets": (0.5,), "seeds": 1, "quiet": True, "methods": METHODS}
    fields.update(kw)
    prune = load_config(PruneConfig, None, [*TINY, *extra])
    return CompareConfig(checkpoint=checkpoint, dataset="digits", out=out, prune=prune, **fields)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, _one_thread: None) -> Path:
    torch.manual_seed(0)
    data = load_dataset("digits")
    spec = ModelSpec("vgg-small", 1, 10, data.input_size, 0.25)
    model = spec.build()
    train(model, data, TrainConfig(epochs=2, seed=0), progress=False)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "model.pt", model, spec)


@pytest.fixture(scope="module")
def full_run(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> CompareResult:
    return compare(_cfg(checkpoint, tmp_path_factory.mktemp("compare")))


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap every registered runner so that the test sees how often each one runs."""
    calls: dict[str, int] = {}
    for name, entry in list(compare_module.REGISTRY.items()):

        def run(ctx: CellContext, name: str = name, inner: Any = entry.run) -> MethodRun:
            calls[name] = calls.get(name, 0) + 1
            result: MethodRun = inner(ctx)
            return result

        monkeypatch.setitem(compare_module.REGISTRY, name, dataclasses.replace(entry, run=run))
    return calls


def test_every_method_runs_with_matched_macs(full_run: CompareResult) -> None:
    out, text = full_run.out, full_run.markdown
    report = json.loads((out / "compare.json").read_text())
    assert report == full_run.report
    assert list(report["results"]) == list(METHODS)
    for method, per_target in report["results"].items():
        r = per_target["0.5"]
        assert r == full_run.summary(method, 0.5)
        assert len(r["seeds"]) == 1 and r["test_acc_std"] == 0.0
        assert 0 <= r["test_acc_mean"] <= 100 and r["params"] > 0 and r["latency_b64_ms"] > 0
        assert r["macs_ratio"] == pytest.approx(r["macs"] / report["baseline"]["macs"])
        if method in MAC_TARGETED:
            assert abs(r["macs_ratio"] / 0.5 - 1) <= 0.02 and r["macs_within_tolerance"]
    # random and l1-rl-ratios use exactly the per-unit counts the agent chose
    rl_kept = report["results"]["rl"]["0.5"]["seeds"][0]["kept"]
    for method in ("random", "l1-rl-ratios"):
        assert report["results"][method]["0.5"]["seeds"][0]["kept"] == rl_kept
        ratio = report["results"][method]["0.5"]["macs_ratio"]
        assert ratio == pytest.approx(report["results"]["rl"]["0.5"]["macs_ratio"])
    assert (out / "rl" / "t0.5_s0" / "report.json").is_file()
    assert "| taylor | 0.5 |" in text
    assert full_run.cells_run == len(METHODS) and full_run.cells_reused == 0


def test_every_method_gets_the_rl_fine_tune_budget(full_run: CompareResult) -> None:
    report = full_run.report
    train_n = len(load_dataset("digits").train)
    expected = 2 * report["n_units"] + round(0.05 * math.ceil(train_n / 128))
    assert report["n_units"] == 6 and report["finetune_steps"] == expected
    equal = [m for m in METHODS if compare_module.REGISTRY[m].equal_finetune]
    assert len(equal) == len(METHODS) - 3  # all but the rl searches record it
    for method in equal:
        assert report["results"][method]["0.5"]["seeds"][0]["finetune_steps"] == expected


def test_markdown_and_plot_are_written(full_run: CompareResult) -> None:
    out, text = full_run.out, full_run.markdown
    md = (out / "compare.md").read_text()
    assert md == text
    assert "| method | target | test acc (mean ± std) |" in md
    assert "rlprune compare --checkpoint" in md and "--set agent.updates=2" in md
    assert "CPUs" in md and f"torch {torch.__version__}" in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_cell_is_saved_with_its_config(full_run: CompareResult) -> None:
    for method in METHODS:
        cell = json.loads((full_run.out / "cells" / method / "t0.5_s0.json").read_text())
        assert (cell["method"], cell["target"], cell["seed"]) == (method, 0.5, 0)
        assert cell["row"] == full_run.summary(method, 0.5)["seeds"][0]
        assert cell["row"]["device"] == "cpu"  # where it fine-tuned (not in the fingerprint)
        fp = cell["fingerprint"]
        assert (
            fp["dataset"] == "digits" and fp["finetune_steps"] == full_run.report["finetune_steps"]
        )
        assert fp["config"]["seed"] == 0 and fp["config"]["reward"]["target_macs"] == 0.5
        assert fp["config"]["reward"]["mode"] == "budget" and len(fp["checkpoint_sha256"]) == 64


def test_a_rerun_reuses_finished_cells(
    full_run: CompareResult, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch)
    again = compare(_cfg(checkpoint, full_run.out))
    assert calls == {} and again.cells_run == 0 and again.cells_reused == len(METHODS)
    assert again.report["results"] == full_run.report["results"]


def test_a_cell_of_another_config_is_refused(
    full_run: CompareResult, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch)
    message = r"made with another config \(config\.finetune_steps: 2 in the cell, 3 now\)"
    with pytest.raises(ConfigError, match=message):
        compare(_cfg(checkpoint, full_run.out, "finetune_steps=3"))
    # a cell of another seed is checked before this call's own seed runs
    with pytest.raises(ConfigError, match=message):
        compare(_cfg(checkpoint, full_run.out, "finetune_steps=3", "seed=7"))
    assert calls == {} and not (full_run.out / "cells" / "rl" / "t0.5_s7.json").exists()


def test_per_seed_calls_add_up_to_one_table(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch)
    methods = ("l1-uniform", "bn-scale")
    targets = (0.5, 0.3)
    for seed in (1, 0):  # two invocations, one seed each, into the same folder
        compare(_cfg(checkpoint, tmp_path, f"seed={seed}", methods=methods, targets=targets))
    assert calls == {"l1-uniform": 4, "bn-scale": 4}
    both = compare(_cfg(checkpoint, tmp_path, methods=methods, targets=targets, seeds=2))
    assert both.cells_run == 0 and both.cells_reused == 8 and calls["bn-scale"] == 4
    report = json.loads((tmp_path / "compare.json").read_text())
    assert list(report["results"]) == ["l1-uniform", "bn-scale"]
    assert report["n_seeds"] == 2 and report["seeds"] == [0, 1]
    for per_target in report["results"].values():
        assert set(per_target) == {"0.5", "0.3"}
        for key, r in per_target.items():
            assert [s["seed"] for s in r["seeds"]] == [0, 1]
            assert abs(r["macs_ratio"] / float(key) - 1) <= 0.02
            accs = [s["test_acc"] for s in r["seeds"]]
            assert r["test_acc_std"] == pytest.approx(statistics.stdev(accs))
    assert not (tmp_path / "rl").exists()
    assert (tmp_path / "pareto.png").is_file() and (tmp_path / "pareto_latency.png").is_file()


def test_a_registered_method_runs(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unpruned(ctx: CellContext) -> MethodRun:
        return MethodRun(ctx.baseline_copy(), {}, search_s=0.0)

    monkeypatch.setitem(compare_module.REGISTRY, "none", Method(unpruned, equal_finetune=False))
    result = compare(_cfg(checkpoint, tmp_path, methods=("none",)))
    r = result.summary("none", 0.5)
    assert r["macs_ratio"] == pytest.approx(1.0) and not r["macs_within_tolerance"]
    assert r["seeds"][0]["finetune_steps"] is None
    assert "--methods none" in result.report["command"]
    assert (tmp_path / "cells" / "none" / "t0.5_s0.json").is_file()


def test_bad_values_raise_one_line_config_errors(checkpoint: Path, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"methods": ("rl", "magic")}, "unknown method 'magic'; valid: rl, rl-layerwise"),
        ({"methods": ()}, "give at least one"),
        ({"targets": (0.5, 1.5)}, "targets"),
        ({"targets": ()}, "targets"),
        ({"targets": (0.5, 0.5)}, "each target once"),
        ({"seeds": 0}, "seeds"),
        ({"dataset": "mnist"}, "dataset"),
        ({"max_train": 1}, "max_train"),
        ({"data_max_mb": 0.0}, "data_max_mb"),
        ({"device": "gpu"}, "device"),
    ]
    for change, match in cases:
        with pytest.raises(ConfigError, match=match) as info:
            dataclasses.replace(_cfg(checkpoint, tmp_path), **change)
        assert "\n" not in str(info.value)


def test_config_coerces_paths_and_sequences(checkpoint: Path, tmp_path: Path) -> None:
    cfg = CompareConfig(
        checkpoint=str(checkpoint),  # type: ignore[arg-type]
        dataset="digits",
        out=str(tmp_path),  # type: ignore[arg-type]
        targets=[0.5, 0.3],  # type: ignore[arg-type]
        methods=["l1-uniform"],  # type: ignore[arg-type]
    )
    assert cfg.checkpoint == checkpoint and cfg.out == tmp_path
    assert cfg.targets == (0.5, 0.3) and cfg.methods == ("l1-uniform",)
    assert cfg.seed_list == [0, 1, 2]
    cell = cfg.cell_config(0.3, 2)
    assert (cell.seed, cell.reward.mode, cell.reward.target_macs) == (2, "budget", 0.3)


def test_a_cell_that_predates_a_config_field_is_reused(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch)
    cfg = _cfg(checkpoint, tmp_path, methods=("l1-uniform",))
    compare(cfg)
    cell = tmp_path / "cells" / "l1-uniform" / "t0.5_s0.json"
    data = json.loads(cell.read_text())
    del data["fingerprint"]["config"]["joint"]["signal"]  # as if written before the field
    cell.write_text(json.dumps(data))
    assert compare(cfg).cells_reused == 1 and calls == {"l1-uniform": 1}
    data["fingerprint"]["config"]["joint"]["lr"] = 0.5  # a setting l1-uniform never reads
    cell.write_text(json.dumps(data))
    assert compare(cfg).cells_reused == 1 and calls == {"l1-uniform": 1}
    data["fingerprint"]["config"]["finetune_lr"] = 0.5  # a value that differs still counts
    cell.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config\.finetune_lr: 0\.5 in the cell"):
        compare(cfg)


def test_joint_settings_count_only_for_a_joint_search() -> None:
    from rlprune.compare_cells import _first_difference, unread_settings

    old = {"config": {"strategy": "layerwise", "joint": {"lr": 0.5}, "seed": 0}}
    new = {"config": {"strategy": "layerwise", "joint": {"lr": 0.01}, "seed": 0}}
    for method in ("l1-uniform", "random-search", "rl-layerwise", "rl"):
        assert _first_difference(old, new, unread_settings(method, new)) is None, method
    diff = _first_difference(old, new, unread_settings("rl-joint", new))
    assert diff == "config.joint.lr: 0.5 in the cell, 0.01 now"
    new["config"]["strategy"] = old["config"]["strategy"] = "joint"
    assert _first_difference(old, new, unread_settings("rl", new)) is not None


def test_a_cell_older_than_a_changed_default_ran_with_the_old_value() -> None:
    from rlprune.compare_cells import _first_difference, unread_settings

    old: dict[str, Any] = {"config": {"joint": {"lr": 0.5}, "seed": 0}}  # before start_uniform
    new = {"config": {"joint": {"lr": 0.5, "start_uniform": True}, "seed": 0}}
    diff = _first_difference(old, new, unread_settings("rl-joint", new))
    assert diff == "config.joint.start_uniform: False in the cell, True now"
    new["config"]["joint"]["start_uniform"] = False  # the value such a cell ran with
    assert _first_difference(old, new, unread_settings("rl-joint", new)) is None
    assert _first_difference(old, new, unread_settings("l1-uniform", new)) is None


def test_the_strategy_setting_counts_only_for_rl() -> None:
    from rlprune.compare_cells import _first_difference, unread_settings

    old = {"config": {"strategy": "layerwise", "seed": 0}}  # cells made before strategy=auto
    new = {"config": {"strategy": "auto", "seed": 0}}
    for method in ("l1-uniform", "random-search", "rl-layerwise", "rl-joint"):
        assert _first_difference(old, new, unread_settings(method, new)) is None, method
    for method in ("rl", "random", "l1-rl-ratios"):  # built on rl's search: its strategy counts
        diff = _first_difference(old, new, unread_settings(method, new))
        assert diff == "config.strategy: 'layerwise' in the cell, 'auto' now", method


def test_the_rl_count_readers_are_the_registry_methods_that_use_rl_counts() -> None:
    from rlprune.compare import REGISTRY
    from rlprune.compare_cells import RL_COUNT_READERS

    assert set(RL_COUNT_READERS) == {m for m, e in REGISTRY.items() if e.uses_rl_counts}
