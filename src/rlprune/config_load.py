"""Reading configs: dict -> dataclass with checked types, YAML without aliases, ``--set``.

:mod:`rlprune.config` defines the config dataclasses and re-exports these functions. Every
error is a :class:`~rlprune.errors.ConfigError` naming the key, with values shown through
:func:`~rlprune.errors.short_repr` (bounded, whatever a hostile file holds).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

from rlprune.errors import ConfigError, short_repr

__all__ = [
    "apply_overrides",
    "check",
    "check_choice",
    "check_range",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_yaml",
]

T = TypeVar("T")


def check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"invalid config value for '{key}': {msg}")


def check_choice(value: object, choices: Any, key: str) -> None:
    """``value`` is one of the ``Literal`` type ``choices``."""
    allowed = get_args(choices)
    ok = isinstance(value, str) and value in allowed
    check(ok, key, f"one of {' | '.join(allowed)}, got {short_repr(value)}")


def check_range(value: float, lo: float, hi: float, key: str) -> None:
    """``lo <= value <= hi``: upper bounds stop a typo from allocating gigabytes or overflowing
    a reward to inf/NaN hours into a run."""
    check(lo <= value <= hi, key, f"must be in [{lo:g}, {hi:g}], got {short_repr(value)}")


# --------------------------------------------------------------------------- (de)serialisation


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-type dict (tuples become lists) suitable for YAML/JSON."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = config_to_dict(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    shown = short_repr(value)  # bounded: the value may come from a hostile YAML file
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str):
            value = [s for s in value.split(",") if s]
        check(isinstance(value, (list, tuple)), key, f"expected a list, got {shown}")
        check(len(value) <= 1_000, key, f"at most 1000 entries, got {len(value)}")
        check(all(isinstance(v, str) for v in value), key, f"expected names, got {shown}")
        return tuple(value)
    if origin is Literal:
        check_choice(value, tp, key)
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        check(isinstance(value, bool), key, f"expected true/false, got {shown}")
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, f"expected int: {shown}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            with contextlib.suppress(ValueError):
                value = float(value[:100])
        check(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            key,
            f"expected a number, got {shown}",
        )
        check(math.isfinite(value), key, f"must be finite, got {shown}")
        return float(value)
    if tp is str:
        check(isinstance(value, str), key, f"expected a string, got {shown}")
        return value
    return value


def config_from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build a (nested) config dataclass from a dict; unknown keys raise :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or '<root>'}' must be a mapping")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(
            f"config key {short_repr(bad[0])} in '{prefix or '<root>'}' is not a name"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0][:80]}'; valid keys: "
            + ", ".join(f"{prefix}{n}" for n in sorted(names))
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            check(isinstance(value, dict), prefix + name, "expected a mapping")
            kwargs[name] = config_from_dict(tp, value, prefix + name + ".")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``).

    A config never needs them, and nested aliases let a few hundred bytes expand to hundreds of
    millions of nodes once anything walks the result.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(
                f"YAML aliases (*name) are not allowed in a config (line {mark.line + 1})"
            )
        return super().compose_node(parent, index)


MAX_CONFIG_BYTES = 1 << 20


def load_yaml(text: str, what: str) -> Any:
    """Parse ``text`` (a config file or a ``--set`` value) without aliases, in one clear error.

    Raises:
        ConfigError: invalid YAML, aliases, nesting too deep, or an integer too long to parse.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {str(e)[:300]}") from e
    except (RecursionError, ValueError) as e:
        raise ConfigError(f"{what} cannot be read: {type(e).__name__}: {str(e)[:100]}") from e


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys, YAML-parsed values) to a nested dict copy."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {short_repr(item)}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key[:80]}': '{p[:80]}' is not a section")
        node[parts[-1]] = load_yaml(raw, f"--set {key[:80]}")
    return out


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Load a config from an optional YAML file, then apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
            text = raw.decode("utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from e
        loaded = load_yaml(text, f"config file {path}")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    return config_from_dict(cls, data)
