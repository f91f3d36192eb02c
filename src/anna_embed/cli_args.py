"""Command-line flags generated from a frozen config dataclass, so that a default is written once.

:func:`add_arguments` adds one ``--field-name`` flag per field of the dataclass (underscores become
dashes); its type comes from the annotation, its default from the field and its help from the class
docstring's ``Attributes:`` entry. :func:`from_args` builds the dataclass back from the parsed namespace.

=====================================  ==========================================================
annotation                             flag
=====================================  ==========================================================
``int`` / ``float`` / ``str``          ``--name VALUE`` (``metadata={"min": N}``: refused below N)
``bool``, default False / True         ``--name`` (store_true) / ``--no-name`` (store_false)
``Literal["a", "b"]``                  ``--name {a,b}`` (``metadata={"choices": ...}`` for others)
``tuple[str, ...]`` / ``list[int]``    ``--name a,b,c`` (comma-separated, blanks dropped)
``X | None``                           as ``X``, default None
no default                             a required flag
=====================================  ==========================================================

Bad values are refused by argparse (exit code 2, the flag named) before anything loads.

:func:`add_override_arguments` adds the same flags as *overrides* of a config that
:func:`anna_embed.config.load` reads from a file: every flag defaults to None (not given: the file's
value, else the field's, stands), and :func:`overrides_from_args` turns the flags given into
``field=value`` strings for ``load``, which converts them as it converts ``--set field=value``. The
value is checked on the command line (a number, a choice, ``metadata={"min": N}``) but passed on as
typed; an ``X | None`` field also takes ``none`` (or ``null``), and a bool field is ``--name`` /
``--no-name`` (``name=true`` / ``name=false``).

Example:
    >>> import argparse
    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     '''Options.
    ...
    ...     Attributes:
    ...         batch_size: Texts per forward pass.
    ...         tasks: Task names.
    ...     '''
    ...
    ...     batch_size: int = field(default=16, metadata={"min": 1})
    ...     tasks: tuple[str, ...] = ()
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser, Opt)
    >>> from_args(Opt, parser.parse_args(["--tasks", "A, B", "--batch-size", "4"]))
    Opt(batch_size=4, tasks=('A', 'B'))
    >>> parser = argparse.ArgumentParser()
    >>> add_override_arguments(parser, Opt)
    >>> overrides_from_args(Opt, parser.parse_args(["--batch-size", "4"]))
    ['batch_size=4']
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

#: ``field(metadata=...)`` keys read here: the lowest accepted number, and choices a Literal cannot spell.
MIN, CHOICES = "min", "choices"


def flag_name(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` entries of a Google-style class docstring, each joined into one line."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").expandtabs().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return docs
    indent = None
    current = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break  # the next section
        match = re.match(r"(\w+)(?: \([^)]*\))?: ?(.*)", line.strip())
        if depth == indent and match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current is not None:
            docs[current] = f"{docs[current]} {line.strip()}".strip()
    return docs


def _plain(text: str) -> str:
    """Docstring markup as a terminal shows it: ``:class:`~a.B``` -> ``B``, double backticks dropped."""
    text = re.sub(r":\w+:`~?([^`]*)`", lambda m: m.group(1).rpartition(".")[2], text)
    return text.replace("``", "")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def at_least(minimum: float, kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type``: a number of ``kind`` that is ``>= minimum`` (argparse names the flag)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def comma_separated(inner: Callable[[str], Any], container: type) -> Callable[[str], Any]:
    """An argparse ``type``: ``"a, b,,c"`` -> ``container(inner("a"), inner("b"), inner("c"))``."""

    def parse(text: str) -> Any:
        return container(inner(item.strip()) for item in text.split(",") if item.strip())

    return parse


def _value_parser(
    f: dataclasses.Field[Any], tp: Any, container: Any = None
) -> tuple[Callable[[str], Any], list[Any] | None]:
    """How one field's flag value is read: its argparse ``type`` and its choices (a ``Literal`` or
    ``metadata={"choices": ...}``); a list or tuple field's items come back in ``container``."""
    base, _ = _unwrap_optional(tp)
    origin = typing.get_origin(base)
    choices = list(f.metadata[CHOICES]) if CHOICES in f.metadata else None
    if origin is typing.Literal:
        return str, choices or list(typing.get_args(base))
    if origin in (tuple, list):
        inner = (typing.get_args(base) or (str,))[0]
        return comma_separated(inner if inner in (int, float, str) else str, container or origin), choices
    if base in (int, float) and MIN in f.metadata:
        return at_least(f.metadata[MIN], base), choices
    if base in (int, float, str):
        return base, choices
    raise TypeError(f"{f.name}: no flag for the type {tp!r}")


def _field_kwargs(f: dataclasses.Field[Any], tp: Any, help_text: str) -> tuple[str, dict[str, Any]]:
    """The flag and ``add_argument`` keywords of one field."""
    base, _ = _unwrap_optional(tp)
    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    kw: dict[str, Any] = {"dest": f.name, "help": _plain(help_text).replace("%", "%%") or None}
    if base is bool:
        if default:
            return "--no-" + f.name.replace("_", "-"), {**kw, "action": "store_false", "default": True}
        return flag_name(f.name), {**kw, "action": "store_true", "default": False}
    kw["type"], choices = _value_parser(f, tp)
    if choices is not None:
        kw["choices"] = choices
    if has_default:
        kw["default"] = default
        if default not in (None, (), []) and kw["help"]:
            kw["help"] = kw["help"].removesuffix(".") + " (default: %(default)s)."
    else:
        kw["required"] = True
    return flag_name(f.name), kw


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    help: dict[str, str] | None = None,
) -> None:
    """Add a flag per field of the dataclass ``cls`` (see the module docstring for the mapping).

    Args:
        parser: Where the flags go.
        cls: A (frozen) dataclass whose fields are ``int``, ``float``, ``str``, ``bool``, ``Literal``,
            ``tuple`` / ``list`` of those, or ``X | None`` of any of them.
        exclude: Fields that get no flag (the caller fills them in :func:`from_args`).
        help: Help texts that replace the docstring's, by field name.

    Raises:
        TypeError: A field of a type this mapping has no flag for.
    """
    hints = typing.get_type_hints(cls)
    docs = {**attribute_docs(cls), **(help or {})}
    skip = set(exclude)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, kw = _field_kwargs(f, hints[f.name], docs.get(f.name, ""))
        parser.add_argument(flag, **kw)


def from_args(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """``cls`` from the parsed flags of :func:`add_arguments`; ``values`` give the excluded fields (or
    replace parsed ones)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    parsed = {n: getattr(args, n) for n in names if n not in values and hasattr(args, n)}
    return cls(**parsed, **values)


_NULL = ("none", "null")
_NOUNS: dict[object, str] = {int: "an integer", float: "a number"}


def _checked(check: Callable[[str], Any], optional: bool) -> Callable[[str], str]:
    """An argparse ``type``: ``text`` as typed once ``check(text)`` accepts it (a list: its items joined
    back with commas, blanks dropped); ``none`` too where ``optional``."""

    def parse(text: str) -> str:
        if optional and text.strip().lower() in _NULL:
            return "none"
        try:
            value = check(text)
        except ValueError:
            kind = _NOUNS.get(check, "comma-separated values") + (" or none" if optional else "")
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        return ",".join(map(str, value)) if isinstance(value, list) else text

    return parse


def _override_kwargs(f: dataclasses.Field[Any], tp: Any, help_text: str) -> dict[str, Any]:
    """The ``add_argument`` keywords of one field's override flag (its value: a string for ``load``)."""
    base, optional = _unwrap_optional(tp)
    kw: dict[str, Any] = {"dest": f.name, "default": None, "help": _plain(help_text).replace("%", "%%")}
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if default not in (dataclasses.MISSING, None, (), []) and kw["help"]:
        shown = ",".join(map(str, default)) if isinstance(default, tuple | list) else default
        kw["help"] = kw["help"].removesuffix(".") + f" (default: {shown})".replace("%", "%%") + "."
    kw["help"] = kw["help"] or None
    if base is bool:
        return {**kw, "action": argparse.BooleanOptionalAction}
    check, choices = _value_parser(f, tp, list)
    if choices is not None:
        choices = [str(c) for c in choices]
        kw["choices"] = [*choices, "none"] if optional else choices
    return {**kw, "type": _checked(check, optional)}


def add_override_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Iterable[str] = (),
) -> None:
    """Add an override flag per field of the dataclass ``cls``: default None, so a flag not given
    changes nothing (see the module docstring; read them back with :func:`overrides_from_args`).

    Args:
        parser: Where the flags go.
        cls: A (frozen) dataclass with the field types :func:`add_arguments` knows.
        exclude: Fields that get no flag.

    Raises:
        TypeError: A field of a type this mapping has no flag for.
    """
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    skip = set(exclude)
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            parser.add_argument(flag_name(f.name), **_override_kwargs(f, hints[f.name], docs.get(f.name, "")))


def overrides_from_args(cls: type, args: argparse.Namespace) -> list[str]:
    """``["field=value", ...]`` of the flags of :func:`add_override_arguments` that were given, in field
    order (bools as ``true`` / ``false``), for :func:`anna_embed.config.load`."""
    out = []
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out.append(f"{f.name}={str(value).lower() if isinstance(value, bool) else value}")
    return out
