"""Config dataclasses from YAML/mappings, with validation that names bad keys.

Every section of a config is a dataclass. `build_dataclass` turns a mapping into one,
refusing unknown keys (with the valid ones listed and the closest match suggested) and
values of the wrong type, so a typo fails before any work is done.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from mvq.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message says what is wrong and how to fix it."""


def load_yaml(path: str | Path) -> dict:
    """Read a YAML file into plain Python containers (OmegaConf, interpolations resolved)."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers; keep them
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    return OmegaConf.to_container(cfg, resolve=True) or {}


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply dotted `key=value` overrides (values parsed as YAML) to a nested mapping."""
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. model.keep_ratio=0.3)")
    base = OmegaConf.create(config)
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_container(merged, resolve=True)


def unknown_key_message(key: str, valid: list[str], where: str) -> str:
    """One line naming an unknown key in `where`, the closest valid key, and all valid keys."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} in {where}.{hint} Valid keys: {', '.join(sorted(valid))}."


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check `value` against a (simple) type annotation, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def build_dataclass(cls: type[T], mapping: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `mapping`, rejecting unknown keys and ill-typed values.

    `where` names the section in error messages (e.g. ``"model"`` or ``"trainer"``).
    """
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in mapping.items():
        if key not in fields:
            raise ConfigError(unknown_key_message(key, list(fields), where))
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"{where} is missing required keys: {', '.join(missing)}") from exc


def _jsonable(value: Any) -> Any:
    """Tuples become lists, recursively: the form a config takes once saved as JSON."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(x) for x in value]
    if isinstance(value, dict):
        return {k: _jsonable(x) for k, x in value.items()}
    return value


def dataclass_to_dict(obj: Any) -> dict:
    """A JSON-friendly dict of a config dataclass (tuples become lists)."""
    return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}


def recorded_config_differences(config: Any, recorded: Mapping[str, Any]) -> list[str]:
    """Fields in which the config dataclass `config` differs from a record of it (a dict saved as JSON).

    A field the record lacks (added to mvq after it was written) counts as its default, which
    is what a folder without it loads with.
    """
    current = dataclass_to_dict(config)
    defaults = {field.name: _jsonable(field.default if field.default is not dataclasses.MISSING
                                      else field.default_factory())
                for field in dataclasses.fields(config)
                if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING}
    differ = [key for key, value in current.items() if recorded.get(key, defaults.get(key, dataclasses.MISSING)) != value]
    extra = [key for key in recorded if key not in current and key not in ("model_type", "architecture")]
    return sorted(differ + extra)
