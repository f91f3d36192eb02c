"""Typed configuration: frozen dataclasses, TOML files, ``--set a.b=c`` overrides, saved with artifacts.

Each stage declares its section as a frozen dataclass next to the code that uses it (``MineConfig`` in
:mod:`anna_embed.mine`, ``TrainConfig`` in :mod:`anna_embed.train_config`, ...); this module holds the one
mechanism that builds them from a file plus overrides and writes the resolved result beside every
artifact. Defaults live only in the dataclass fields.

A variant is written as changes to another file, never as a copy of it: a file whose top level holds
``base = "full.toml"`` (a path relative to that file) and ``overrides = ["data.max_shots=0", ...]`` (the
``--set`` syntax) resolves to the base file with those overrides applied, then the command line's
``--set`` (:func:`load`). Such a file holds nothing else; a base may itself have a base.

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


def _apply(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``data`` with ``key.sub=value`` override strings set (values coerced later, by type)."""
    tree = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_path(tree, key.strip(), value)
    return tree


def build(cls: type[T], data: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``cls`` from a (nested) dict plus ``key.sub=value`` override strings."""
    return _from_dict(cls, _apply(data or {}, overrides))


#: Top-level keys of a config file that are not fields: the file it changes and its changes.
BASE_KEY, OVERRIDES_KEY = "base", "overrides"


def _read(path: Path) -> dict[str, Any]:
    """One TOML (or JSON) file's contents; errors name the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: {err}") from None


def read_chain(
    path: str | os.PathLike[str],
) -> tuple[tuple[Path, dict[str, Any]], list[tuple[Path, list[str]]]]:
    """Follow ``path``'s ``base`` links: ``((root file, its tables), [(file, its overrides), ...])``.

    The root is the first file without ``base``; the variant files follow in the order their overrides
    apply (the root's child first, ``path`` last; empty when ``path`` is the root).

    Raises:
        ConfigError: A file missing or malformed, ``base`` links that form a cycle (naming the files in
            order), a file with ``base`` that holds tables too, or ``overrides`` without ``base``.
    """
    variants: list[tuple[Path, list[str]]] = []
    p = Path(path)
    visited: list[Path] = []
    while True:
        if p.resolve() in [v.resolve() for v in visited]:
            raise ConfigError(f"config base cycle: {' -> '.join(str(v) for v in [*visited, p])}")
        visited.append(p)
        data = _read(p)
        base, sets = data.pop(BASE_KEY, None), data.pop(OVERRIDES_KEY, None)
        if base is None:
            if sets is not None:
                raise ConfigError(f"{p}: '{OVERRIDES_KEY}' needs a '{BASE_KEY}' file to apply them to")
            return (p, data), variants[::-1]
        if not isinstance(base, str):
            raise ConfigError(f"{p}: '{BASE_KEY}' must be a file path, got {base!r}")
        if sets is not None and not (isinstance(sets, list) and all(isinstance(x, str) for x in sets)):
            raise ConfigError(f"{p}: '{OVERRIDES_KEY}' must be a list of 'key=value' strings, got {sets!r}")
        if data:
            raise ConfigError(
                f"{p}: a file with '{BASE_KEY}' gives its changes as '{OVERRIDES_KEY}' only, "
                f"not as {sorted(data)}"
            )
        variants.append((p, list(sets or [])))
        p = p.parent / base


def merge(tree: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``tree`` with ``update`` deep-merged into it (tables merge key by key, other values replace)."""
    out = dict(tree)
    for key, value in update.items():
        old = out.get(key)
        out[key] = merge(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


def load(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    defaults: T | None = None,
) -> T:
    """Load ``cls`` from a TOML (or JSON) file, following its ``base`` chain, and apply ``overrides``.

    The result is one :func:`build` of the root's tables with every file's overrides, then ``overrides``.
    ``defaults`` (an instance) replaces the class's own defaults underneath: the file's tables are merged
    into it key by key (``adapt``'s sections start from its own training and mining settings).
    An error names the first file whose part does not fit on its own (a file's ``overrides`` give the
    error a bad ``--set`` gives), else ``path`` (the command line's ``overrides``).
    """
    start = to_dict(defaults) if defaults is not None else {}
    if path is None:
        return build(cls, start, overrides)
    (root, tables), variants = read_chain(path)
    tables = merge(start, tables)
    stages = [(root, []), *variants]
    tree = tables
    for file, sets in stages:
        try:
            tree = _apply(tree, sets)
        except ConfigError as err:
            raise ConfigError(f"{file}: {err}") from None
    try:
        return build(cls, tree, overrides)
    except ConfigError as err:
        failed = err
    tree = tables
    for file, sets in stages:  # which file's part fails on its own
        try:
            tree = _apply(tree, sets)
            _from_dict(cls, tree)
        except ConfigError as err:
            raise ConfigError(f"{file}: {err}") from None
    raise ConfigError(f"{path}: {failed}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as JSON, atomically."""
    write_json(path, {"type": type(cfg).__name__, "config": to_dict(cfg)})
