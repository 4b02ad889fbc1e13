"""Command-line flags declared on frozen dataclasses: the dataclass *is* the flag set.

A field declares its flag with ``flag(default, env=..., help=...)``; its type comes from
the annotation, so a flag's default, environment fallback and help are written once, on
the field (the pattern of vLLM's ``EngineArgs`` and SGLang's ``ServerArgs``). A field
whose type is another dataclass is a group: ``group("title")`` for a flag dataclass of
ours, or ``group("title", Foreign, field=Flag(...))`` to give flags to some fields of a
dataclass declared elsewhere (its defaults stay where that class declares them).

``add_flags(parser, Cls, defaults)`` adds every flag; ``build(Cls, namespace, defaults)``
reads each one from the command line, else its environment variable, else its default,
and constructs the (nested) dataclass. ``defaults`` overrides defaults by dotted field path
(``{"server.port": 50052}``), e.g. per worker role; help shows the overridden values.
Every bad value raises ``ValueError`` naming the field and where the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

FLAG = "pdserve.flag"
GROUP = "pdserve.group"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
T = TypeVar("T")


@dataclass(frozen=True)
class Flag:
    """How one field reads from the command line and the environment."""

    help: str = ""
    env: str = ""  # environment fallback; "" = none
    name: str = ""  # "--x"; default: the field name with dashes
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    # str -> value (list[str] -> value for a repeated flag); default: from the annotation
    parse: Callable[[Any], Any] | None = None
    repeat: bool = False  # the flag may be given many times; the env value is one item
    negate: bool = False  # a bool flag that sets False when given (``--no-x``)
    fmt: Callable[[Any], str] | None = None  # how help shows the default


@dataclass(frozen=True)
class Group:
    title: str
    cls: type | None = None  # a foreign dataclass; None = the field's own annotation
    flags: Mapping[str, Flag] = dataclasses.field(default_factory=dict)  # foreign fields' flags


def flag(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field that is also a flag; no default → the flag is required."""
    meta = {FLAG: Flag(**spec)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def group(title: str, cls: type | None = None, /, *, default_factory: Any = MISSING, **flags: Flag) -> Any:
    """A dataclass field holding a nested flag dataclass (or a foreign one with ``flags``)."""
    meta = {GROUP: Group(title, cls, flags)}
    return dataclasses.field(default_factory=default_factory, metadata=meta)


@dataclass(frozen=True)
class _Spec:
    path: str  # dotted field path from the root class: "server.port"
    flag: Flag
    type: Any
    default: Any  # MISSING = required
    title: str

    @property
    def field(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def option(self) -> str:
        return self.flag.name or "--" + self.field.replace("_", "-")

    @property
    def dest(self) -> str:
        return self.path.replace(".", "__")


def _specs(
    cls: type, defaults: Mapping[str, Any], prefix: str = "", title: str = "", own: Mapping[str, Flag] | None = None
) -> Iterator[_Spec]:
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        sub = f.metadata.get(GROUP)
        if sub is not None:
            yield from _specs(sub.cls or hints[f.name], defaults, path + ".", sub.title, sub.flags if sub.cls else None)
            continue
        spec = own.get(f.name) if own is not None else f.metadata.get(FLAG)
        if spec is None:
            continue
        default = f.default if f.default_factory is MISSING else f.default_factory()
        yield _Spec(path, spec, hints[f.name], defaults.get(path, default), title)


def _checked_specs(cls: type, defaults: Mapping[str, Any] | None) -> list[_Spec]:
    specs = list(_specs(cls, defaults or {}))
    unknown = set(defaults or {}) - {s.path for s in specs}
    if unknown:  # a misspelt role default would silently not apply
        raise TypeError(f"flags: defaults for fields that are not flags of {cls.__name__}: {sorted(unknown)}")
    return specs


def add_flags(parser: argparse.ArgumentParser, cls: type, defaults: Mapping[str, Any] | None = None) -> None:
    """Add one option per flag field of ``cls`` (groups become argument groups)."""
    groups: dict[str, Any] = {"": parser}
    for s in _checked_specs(cls, defaults):
        if s.title not in groups:
            groups[s.title] = parser.add_argument_group(s.title)
        kw: dict[str, Any] = {"dest": s.dest, "default": None, "help": _help(s)}
        if _base(s.type) is bool:
            kw.update(action="store_const", const="false" if s.flag.negate else "true")
        else:
            kw["action"] = "append" if s.flag.repeat else "store"
            if s.flag.choices:
                kw["choices"] = s.flag.choices
            else:  # argparse's own would be the dest, which spells the field path
                kw["metavar"] = s.flag.metavar or s.option.lstrip("-").upper().replace("-", "_")
        groups[s.title].add_argument(s.option, **kw)


def build(cls: type[T], ns: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> T:
    """The dataclass ``cls`` from parsed flags, their environment fallbacks and defaults."""
    values = {s.path: _value(s, getattr(ns, s.dest, None)) for s in _checked_specs(cls, defaults)}
    return _construct(cls, values, "")


def parse_bool(raw: str) -> bool:
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}, got {raw!r}")


def _construct(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    kwargs: dict[str, Any] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        sub = f.metadata.get(GROUP)
        if sub is not None:
            kwargs[f.name] = _construct(sub.cls or hints[f.name], values, path + ".")
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


def _value(s: _Spec, given: Any) -> Any:
    if given is not None:
        raw, source = given, s.option
    elif s.flag.env and s.flag.env in os.environ:
        raw, source = os.environ[s.flag.env], s.flag.env
        raw = [raw] if s.flag.repeat else raw
    elif s.default is not MISSING:
        return s.default
    else:
        where = f" or set {s.flag.env}" if s.flag.env else ""
        raise ValueError(f"{s.field}: required: give {s.option}{where}")
    if s.flag.choices and not s.flag.repeat and raw not in s.flag.choices:
        raise ValueError(f"{s.field} ({source}): {raw!r} is not one of {list(s.flag.choices)}")
    try:
        return (s.flag.parse or _parser(s.type, s.flag.repeat))(raw)
    except ValueError as exc:
        raise ValueError(f"{s.field} ({source}): {exc}") from None


def _optional(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
        return next(a for a in get_args(tp) if a is not type(None))
    return None


def _base(tp: Any) -> Any:
    return _optional(tp) or tp


def _scalar(tp: Any) -> Callable[[str], Any]:
    inner = _optional(tp)
    if inner is not None:
        parse = _scalar(inner)
        return lambda raw: parse(raw) if raw.strip() else None  # "" = unset
    if tp is bool:
        return parse_bool
    if tp in (int, float):
        return lambda raw: _number(tp, raw)
    if tp in (str, Path):
        return tp
    raise TypeError(f"flags: no parser for {tp!r}; give Flag.parse")


def _number(tp: type, raw: str) -> Any:
    try:
        return tp(raw)
    except ValueError:
        raise ValueError(f"invalid {tp.__name__} value {raw!r}") from None


def _parser(tp: Any, repeat: bool) -> Callable[[Any], Any]:
    if get_origin(tp) in (tuple, list):
        item = _scalar(get_args(tp)[0])
        container = get_origin(tp)
        # Comma-separated, repeated, or both: "a,b" --x c == ("a", "b", "c")
        return lambda raw: container(
            item(part.strip()) for value in (raw if repeat else [raw]) for part in value.split(",") if part.strip()
        )
    return _scalar(tp)


def _help(s: _Spec) -> str:
    if s.default is MISSING:
        shown = "required"
    else:
        shown = "default: " + (s.flag.fmt(s.default) if s.flag.fmt else _show(s.default))
    where = f"{s.flag.env}; " if s.flag.env else ""
    if s.flag.negate:  # the flag turns the field off; its variable says the same with 0
        where, shown = (f"{s.flag.env}=0; " if s.flag.env else ""), "default: off"
    # "%" would start an argparse help format
    return f"{s.flag.help} [{where}{shown}]".strip().replace("%", "%%")


def _show(value: Any) -> str:
    if value is None or value in ("", (), [], {}):
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value)
