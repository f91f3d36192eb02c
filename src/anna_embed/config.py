"""Typed configuration: frozen dataclasses, TOML files, ``--set a.b=c`` overrides, saved with artifacts.

Each stage declares its section as a frozen dataclass next to the code that uses it (``MineConfig`` in
:mod:`anna_embed.mine`, ``TrainConfig`` in :mod:`anna_embed.train_config`, ...); this module holds the one
mechanism that builds them from a file plus overrides and writes the resolved result beside every
artifact. Defaults live only in the dataclass fields.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     lr: float = 1e-4
    ...     steps: int = 10
    >>> build(Opt, {"lr": 0.1}, ["steps=3"])
    Opt(lr=0.1, steps=3)
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from anna_embed.io import write_json

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from TOML or an override string) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if not value.startswith("[") else _json(value, where)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = _json(value, where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table (JSON object), got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _json(text: str, where: str) -> Any:
    """Parse an override's JSON value; an error names the key, shows the value and where it broke.

    ``--set 'data.sources=[{"path": "a"},]'`` fails with ``data.sources: malformed JSON '[{"path": "a"},]'
    (Expecting value at line 1 column 16: '[{"path": "a"},>>>]')``.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        marked = f"{text[: err.pos]}>>>{text[err.pos :]}"
        at = f"line {err.lineno} column {err.colno}"
        raise ConfigError(f"{where}: malformed JSON {text!r} ({err.msg} at {at}: {marked!r})") from None


def _from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a table")
    node[keys[-1]] = value


def build(cls: type[T], data: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``cls`` from a (nested) dict plus ``key.sub=value`` override strings."""
    tree = json.loads(json.dumps(data or {}))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_path(tree, key.strip(), value)
    return _from_dict(cls, tree)


def load(
    cls: type[T], path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Load ``cls`` from a TOML (or JSON) file and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{p}: {err}") from None
        try:
            return build(cls, data, overrides)
        except ConfigError as err:
            raise ConfigError(f"{p}: {err}") from None
    return build(cls, data, overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as JSON, atomically."""
    write_json(path, {"type": type(cfg).__name__, "config": to_dict(cfg)})
