"""Type checking and conversion of training-config values given in YAML or on the command line.

`check_type` tests a value against a `TrainConfig` field's type hint; `convert` turns a YAML
value or a command-line string into the field's type (`1e-5` is a float even though YAML 1.1
reads it as a string; `-1,-8` or `[-1, -8]` is a list of ints), taking TRL's boolean spellings
of some choices (`scale_rewards: true` = `group`). Both raise SIError naming the key.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from types import MappingProxyType, NoneType, UnionType
from typing import Any, Literal, get_args, get_origin

from si_toolkit.errors import SIError

__all__ = ["check_type", "convert"]


def _type_name(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in get_args(hint))
    if get_origin(hint) in (UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(hint))
    if get_origin(hint) is list:
        return f"a list of {_type_name(get_args(hint)[0])}"
    return "None" if hint is NoneType else getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint) and isinstance(value, str)
    if origin in (UnionType, typing.Union):
        return any(_matches(value, a) for a in get_args(hint))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, get_args(hint)[0]) for v in value)
    if hint is NoneType:
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_type(name: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        raise SIError(f"{name}={value!r}: expected {_type_name(hint)}")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def convert(name: str, raw: Any, hint: Any) -> Any:
    """Turn a YAML value or a command-line string into field `name`'s type (or raise SIError)."""
    raw = _TRL_SPELLINGS.get((name, _bool_of(raw)), raw)
    return _convert(name, raw, hint)


def _convert(name: str, raw: Any, hint: Any) -> Any:
    if _matches(raw, hint):
        # An int given for a float field (YAML `lr: 1`) is stored as a float.
        return float(raw) if isinstance(raw, int) and not _matches(raw, _without_float(hint)) else raw
    if not isinstance(raw, str):
        raise SIError(f"{name}={raw!r}: expected {_type_name(hint)}")
    text = raw.strip()
    args = get_args(hint)
    if get_origin(hint) in (UnionType, typing.Union):
        if NoneType in args and text.lower() in ("none", "null", "~", ""):
            return None
        inner = [a for a in args if a is not NoneType]
        return _convert(name, raw, inner[0] if len(inner) == 1 else hint)
    try:
        if hint is bool and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if get_origin(hint) is list:
            items = [t.strip().strip("'\"") for t in text.strip("[]").split(",") if t.strip()]
            return [_convert(name, item, args[0]) for item in items]
    except ValueError:
        pass
    raise SIError(f"{name}={raw!r}: expected {_type_name(hint)}")


def _without_float(hint: Any) -> Any:
    """The hint minus float (so an int that matches only via float is known to need converting)."""
    if hint is float:
        return NoneType
    if get_origin(hint) in (UnionType, typing.Union):
        rest = [a for a in get_args(hint) if a is not float]
        return typing.Union[tuple(rest)] if rest else NoneType
    return hint


# TRL configs spell some choices as booleans; they mean the same as these names.
_TRL_SPELLINGS: Mapping[tuple[str, bool | None], str] = MappingProxyType(
    {("scale_rewards", True): "group", ("scale_rewards", False): "none"}
)


def _bool_of(raw: Any) -> bool | None:
    """A YAML boolean, or a command-line true/false, as a bool (None for anything else)."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    return None
