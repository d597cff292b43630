"""Configs: YAML files in `configs/` are the single source of hyper-parameters.

A config is a nested dataclass; loading checks every key and value, so a typo or a bad value
fails at start-up with the file, the key and what would be valid, not hours into a run.
`--set section.key=value` on the command line overrides single values (parsed as YAML).
Malformed YAML, a key given twice, or a `--set` below a plain value is a ConfigError naming the
file or the option, never a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message says which and why."""


def check_sections(config: Any) -> None:
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        if dataclasses.is_dataclass(section):
            section.check()


def require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def require_range(value: int, low: int, high: int, key: str) -> None:
    """An integer key in [low, high]; the upper bounds are common/limits.py's, which say why each."""
    require(value >= low, key, f"must be >= {low}")
    require(value <= high, key, f"must be an integer from {low} to {high}, got {value}")


def build(cls: type, values: dict, where: str) -> Any:
    """Make dataclass `cls` from a dict, rejecting unknown keys and values of the wrong type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{name}: unknown key{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = build(kind, value, name)
            continue
        if typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            if not isinstance(value, list) or not all(type(v) is item for v in value):
                raise ConfigError(f"{name}: expected a list of {item.__name__}, got {value!r}")
            kwargs[key] = value
            continue
        if kind is float and not isinstance(value, bool):
            value = as_float(value)
            if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison-based check
                raise ConfigError(f"{name}: must be a finite number, got {value!r}")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def as_float(value: Any) -> Any:
    """Ints, and strings like '3e-4' (YAML 1.1 reads a float without a dot as a string), as floats."""
    if isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            pass
    return value


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice is an error: YAML would silently keep the last one,
    so a pasted second `lr:` would override the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeyLoader.construct_mapping)


def parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"not valid YAML{where}: {problem}") from None


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings (value parsed as YAML) to a raw config dict."""
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        keys = path.strip().split(".")
        if not all(keys):
            raise ConfigError(f"--set {item!r}: empty key in {path!r}")
        node = values
        for depth, part in enumerate(keys[:-1]):
            if node.get(part) is None:  # absent, or a section left empty in the file
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        try:
            node[keys[-1]] = parse_yaml(raw)
        except ConfigError as err:
            raise ConfigError(f"--set {item!r}: value is {err}") from None
    return values


def read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = parse_yaml(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except (ConfigError, OSError) as err:
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections and keys, got {type(values).__name__}")
    return values


def load_config(path: str | Path | None, overrides: list[str] = (), *, cls: type) -> Any:
    """Config `cls` (a stage's top-level dataclass) from a YAML file and `--set` overrides, checked."""
    values = read_config_file(Path(path)) if path is not None else {}
    try:
        config = build(cls, apply_overrides(values, list(overrides)), "")
        config.check()
    except ConfigError as err:
        raise ConfigError(f"{path or 'config'}: {err}") from None
    return config


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
