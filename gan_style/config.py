"""Typed configuration: dataclasses, YAML files, named presets and ``--set key=value`` overrides.

A method's configuration is one dataclass (``CycleGANConfig``, ...) whose fields may themselves be
dataclasses (``data: DataConfig``, ``train: TrainConfig``). A YAML recipe names the method and
overrides some fields; a preset is a named set of overrides that a method ships (``paper``,
``demo``). Nothing here knows any method by name: methods register themselves in
``gan_style.methods``.

Order of application: dataclass defaults < preset < YAML file < command line ``--set``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gan_style.errors import UserError


class ConfigError(UserError):
    """A configuration value or key that does not fit the method's config."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (ConfigError, ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: cannot read {value!r} as {tp}: {'; '.join(errors)}")
    if tp is Any:
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        item_tp = args[0] if args else Any
        items = [_coerce(v.strip() if isinstance(v, str) else v, item_tp, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of fields, got {value!r}")
        return apply_overrides(tp(), value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            # NaN or infinity is never a meaningful setting; "no limit" is spelled none.
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def apply_overrides(config: Any, overrides: Mapping[str, Any], prefix: str = "") -> Any:
    """Return a copy of ``config`` with ``overrides`` applied.

    Keys may be nested mappings (``{"data": {"crop_size": 128}}``) or dotted paths
    (``{"data.crop_size": 128}``). An unknown key raises ``ConfigError`` listing the valid ones.
    """
    hints = _field_types(type(config))
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for raw_key, value in overrides.items():
        head, _, rest = str(raw_key).partition(".")
        if head not in hints:
            valid = ", ".join(f.name for f in dataclasses.fields(config))
            raise ConfigError(f"unknown option '{prefix}{head}' for {type(config).__name__}; valid options: {valid}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif _is_dataclass_type(hints[head]) and isinstance(value, Mapping):
            nested.setdefault(head, {}).update(value)
        else:
            changes[head] = _coerce(value, hints[head], prefix + head)
    for head, sub in nested.items():
        base = changes.get(head, getattr(config, head))
        changes[head] = apply_overrides(base, sub, prefix=f"{prefix}{head}.")
    if not changes:
        return config
    try:
        return dataclasses.replace(config, **changes)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        # A config's own checks (__post_init__) raise ValueError; report them as option errors.
        raise ConfigError(f"{prefix}{', '.join(sorted(changes))}: {error}") from None


def parse_set_arguments(items: list[str] | None) -> dict[str, Any]:
    """``["lambda_cycle=5", "data.crop_size=128"]`` -> a dotted-key mapping (values read as YAML scalars)."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        parsed = yaml.safe_load(value) if value.strip() else ""
        # Keep strings such as "1e-4" numeric and "resnet_9blocks" as strings; YAML decides,
        # except that YAML 1.1's yes/no/on/off stay words: train.mixed_precision=no is the option
        # "no" (bool fields read these words as booleans anyway).
        if isinstance(parsed, bool) and value.strip().lower() not in ("true", "false"):
            parsed = value.strip()
        result[key.strip()] = parsed
    return result


def to_dict(config: Any) -> dict[str, Any]:
    """A plain (YAML- and checkpoint-safe) nested dict of a config dataclass."""
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(config)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.constructor.ConstructorError as error:
        # safe_load refuses tags such as !!python/object, which would build arbitrary objects.
        raise ConfigError(f"{path}: {error.problem} {error.problem_mark or ''}; recipes hold plain values only "
                          f"(numbers, strings, lists, mappings)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where} ({getattr(error, 'problem', None) or error}); fix the file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level")
    return data


def dump_yaml(config: Any, path: str | Path) -> None:
    with Path(path).open("w") as fh:
        yaml.safe_dump(to_dict(config), fh, sort_keys=False)
