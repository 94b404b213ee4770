"""Config validation, YAML loading, --set overrides."""

import dataclasses

import pytest
import yaml

from rlprune.config import (
    AgentConfig,
    PruneConfig,
    RewardConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from rlprune.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path) -> None:
    cfg = PruneConfig(exclude=("features.0",), reward=RewardConfig(mode="budget", target_macs=0.5))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(PruneConfig, path) == cfg


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PruneConfig().seed = 3  # type: ignore[misc]


def test_set_overrides_nested_keys() -> None:
    cfg = load_config(PruneConfig, None, ["agent.lr=0.5", "finetune_steps=7", "exclude=a,b"])
    assert cfg.agent.lr == 0.5 and cfg.finetune_steps == 7 and cfg.exclude == ("a", "b")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["reward.mode=budget", "reward.target_macs=-0.5"], "target_macs"),
        (["reward.mode=budget", "reward.target_macs=1.0"], "target_macs"),
        (["reward.mode=budget", "reward.target_macs=0"], "target_macs"),
        (["reward.target_macs=0.5"], "target_macs"),  # both modes at once
        (["reward.max_acc_drop=-1"], "max_acc_drop"),
        (["agent.samples=1"], "agent.samples"),
        (["agent.lr=fast"], "agent.lr"),
        (["nonsense=1"], "nonsense"),
        (["agent.nonsense=1"], "agent.nonsense"),
        (["finetune_steps=1.5"], "finetune_steps"),
        (["rollout.precision=fp16"], "rollout.precision"),
    ],
)
def test_bad_values_name_the_key(overrides, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(PruneConfig, None, overrides)


def test_unknown_yaml_key_is_rejected(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("agent:\n  hiden: 3\n")
    with pytest.raises(ConfigError, match="agent.hiden"):
        load_config(PruneConfig, path)


def test_malformed_yaml_and_set() -> None:
    with pytest.raises(ConfigError):
        apply_overrides({}, ["no-equals-sign"])
    with pytest.raises(ConfigError):
        config_from_dict(AgentConfig, {"hidden": True})


def test_tolerance_auto_is_four_times_the_bound() -> None:
    assert RewardConfig(max_acc_drop=0.5).b == 2.0
    assert RewardConfig(max_acc_drop=0.5, tolerance=3.0).b == 3.0


def test_final_steps_count_epochs_of_the_whole_split() -> None:
    # Fashion-MNIST's 54000 training images at batch 128: 422 steps an epoch.
    assert PruneConfig(final_finetune_epochs=0.5).final_steps(54000) == 211
    assert PruneConfig(final_finetune_epochs=1.0, batch_size=64).final_steps(256) == 4
    assert PruneConfig(final_finetune_epochs=0.0).final_steps(54000) == 0
