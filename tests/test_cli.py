"""The command line speaks to users: help on every option, ``--version``, typed commands."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rlprune
from rlprune import cli
from rlprune.compare import DEFAULT_METHODS, METHODS, CompareConfig
from rlprune.compare_report import command_line
from rlprune.config import PruneConfig, TrainConfig, load_config


def _parsers(
    parser: argparse.ArgumentParser, name: str = "rlprune"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            yield action


def test_every_option_of_every_command_has_help() -> None:
    parsers = dict(_parsers(cli.build_parser()))
    assert set(parsers) == {
        "rlprune",
        *(
            f"rlprune {c}"
            for c in ("train", "eval", "inspect", "prune", "report", "compare", "profile")
        ),
        "rlprune demo",
    }
    for name, parser in parsers.items():
        for action in _options(parser):
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{label} has no help"
            if name != "rlprune" and action.option_strings:  # subcommand options
                assert "default" in action.help or "required" in action.help, label


def test_set_help_shows_an_example() -> None:
    parsers = dict(_parsers(cli.build_parser()))
    sets = {n: a.help for n, p in parsers.items() for a in _options(p) if a.dest == "set"}
    assert set(sets) == {"rlprune train", "rlprune prune", "rlprune compare", "rlprune demo"}
    assert "--set agent.samples=16" in str(sets["rlprune prune"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"rlprune {rlprune.__version__}\n"


def test_top_level_help_says_what_the_tool_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "reinforcement-learning" in text and "rlprune prune --checkpoint" in text
    assert "The only module that prints" not in text and "Developer notes" not in text


def test_bad_targets_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--checkpoint", "m.pt", "--dataset", "digits", "--out", "o",
                  "--targets", "half"])  # fmt: skip
    assert info.value.code == 2
    assert "comma-separated numbers" in capsys.readouterr().err


def test_compare_args_become_a_config_that_its_command_reproduces(tmp_path: Path) -> None:
    argv = [
        "compare", "--checkpoint", str(tmp_path / "m.pt"), "--dataset", "digits",
        "--out", str(tmp_path / "cmp"), "--targets", "0.4,0.2", "--seeds", "1", "--seed", "2",
        "--methods", "l1-uniform,rl", "--max-train", "300",
        "--set", "finetune_steps=5", "--set", "agent.samples=4", "--quiet",
    ]  # fmt: skip
    cfg = cli._compare_config(cli.build_parser().parse_args(argv))
    assert cfg.targets == (0.4, 0.2) and cfg.seed_list == [2] and cfg.max_train == 300
    assert cfg.methods == ("l1-uniform", "rl") and cfg.quiet
    assert (cfg.prune.finetune_steps, cfg.prune.agent.samples) == (5, 4)
    command = command_line(cfg, DEFAULT_METHODS)
    again = cli._compare_config(cli.build_parser().parse_args(shlex.split(command)[1:]))
    assert again == CompareConfig(**{**cfg.__dict__, "quiet": False})


def test_compare_runs_rl_once_by_default(tmp_path: Path) -> None:
    argv = ["compare", "--checkpoint", "m.pt", "--dataset", "digits", "--out", str(tmp_path)]
    cfg = cli._compare_config(cli.build_parser().parse_args(argv))
    assert cfg.methods == DEFAULT_METHODS == CompareConfig(Path("m.pt"), "digits", tmp_path).methods
    assert "rl" in cfg.methods and not {"rl-joint", "rl-layerwise"} & set(cfg.methods)
    assert set(METHODS) - set(cfg.methods) == {"rl-joint", "rl-layerwise"}
    assert "--methods" not in command_line(cfg, DEFAULT_METHODS)
    every = dataclasses.replace(cfg, methods=METHODS)
    assert f"--methods {','.join(METHODS)}" in command_line(every, DEFAULT_METHODS)


def test_demo_calls_the_typed_train_and_prune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, tuple[Any, ...]] = {}

    def recorder(name: str) -> Any:
        def record(*args: Any) -> int:
            calls[name] = args
            return 0

        return record

    monkeypatch.setattr(cli, "_train", recorder("train"))
    monkeypatch.setattr(cli, "_prune", recorder("prune"))
    assert cli.main(["demo", "--out", str(tmp_path), "--set", "agent.samples=16"]) == 0
    source = cli.DataSource("fashion-mnist")
    base = tmp_path / "base" / "model.pt"
    expected_train = ("vgg-small", 1.0, source, TrainConfig(epochs=3.0, seed=0), base.parent)
    assert calls["train"] == (*expected_train, "cpu", False)
    sets = ["agent.samples=16", "reward.mode=accuracy", "reward.max_acc_drop=1.0", "seed=0"]
    cfg = load_config(PruneConfig, None, sets)
    assert calls["prune"] == (base, source, cfg, tmp_path / "prune", False, "cpu", False)


def test_prune_args_become_a_budget_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[PruneConfig] = []

    def record(checkpoint: Path, source: cli.DataSource, cfg: PruneConfig, *rest: Any) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr(cli, "_prune", record)
    argv = ["prune", "--checkpoint", "m.pt", "--dataset", "digits", "--out", "o",
            "--target-macs", "0.4", "--mode", "amc", "--seed", "3"]  # fmt: skip
    assert cli.main(argv) == 0
    (cfg,) = seen
    assert (cfg.reward.mode, cfg.reward.target_macs, cfg.seed) == ("amc", 0.4, 3)


def test_compare_methods_help_lists_every_registered_method() -> None:
    parsers = dict(_parsers(cli.build_parser()))
    (methods,) = [a for a in _options(parsers["rlprune compare"]) if a.dest == "methods"]
    assert all(m in str(methods.help) for m in METHODS), "update --methods help in cli_args.py"
