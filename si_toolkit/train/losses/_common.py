"""Helpers shared by the loss modules: choosing a named variant from its registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from si_toolkit.errors import SIError

__all__ = ["choose"]

_F = TypeVar("_F")


def choose(registry: Mapping[str, _F], name: str, field: str) -> _F:
    """The registry entry `name`, or an SIError naming the field and the valid choices."""
    if name not in registry:
        raise SIError(f"{field}={name!r} is not a known choice; use one of {sorted(registry)}")
    return registry[name]
