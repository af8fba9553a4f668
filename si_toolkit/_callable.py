"""Make a sub-package callable, so `si.rank(...)`, `si.train(...)` and `si.evolve(...)` work.

The public functions share their names with the packages that hold them (`si_toolkit/rank/`
holds `rank()`). Importing a sub-package always rebinds the parent's attribute of that name to
the module, so a plain function `si_toolkit.rank` would be replaced by the module as soon as
anything imports `si_toolkit.rank.pipeline`. Making the module itself callable keeps both
meanings: `si.rank(...)` runs a ranking and `si_toolkit.rank.pipeline` stays a module.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["make_callable"]


class _CallablePackage(types.ModuleType):
    """A package whose call runs the function named by its `__call_target__` ("module:function")."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, _, name = self.__dict__["__call_target__"].partition(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


def make_callable(package_name: str, target: str) -> None:
    """Let `package(...)` call `target` ("module:function"), imported on first call."""
    package = sys.modules[package_name]
    package.__call_target__ = target  # type: ignore[attr-defined]
    package.__class__ = _CallablePackage
