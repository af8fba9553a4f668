"""si-toolkit: rank principle sets by the Sufficiency Index of a model's chain of thought.

    import si_toolkit as si
    ranking = si.rank(["principles/helpful-vs-harmless.yaml", "principles/null-control.yaml"])
    ranking.table            # pandas DataFrame, one row per set (the columns of si.csv)

Names are imported on first use, so `import si_toolkit` loads neither torch nor pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

from si_toolkit._version import __version__

__all__ = [
    "__version__",
    "rank", "load_run", "estimate", "Ranking", "Run",
    "train", "TrainRun",
    "evaluate",
    "evolve",
    "PrincipleSet", "PromptSet",
    "SIError",
]

# Public name -> the module that defines it. `rank`, `train` and `evolve` are their packages,
# made callable (si_toolkit/_callable.py explains why a plain function would not survive).
_PACKAGES = {"rank": "si_toolkit.rank", "train": "si_toolkit.train", "evolve": "si_toolkit.evolve"}
_WHERE = {
    "load_run": "si_toolkit.rank.api", "estimate": "si_toolkit.rank.api",
    "Ranking": "si_toolkit.rank.api", "Run": "si_toolkit.rank.api",
    "TrainRun": "si_toolkit.train.api",
    "evaluate": "si_toolkit.confirm.api",
    "PrincipleSet": "si_toolkit.principles", "PromptSet": "si_toolkit.prompts",
    "SIError": "si_toolkit.errors",
}


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        value = importlib.import_module(_PACKAGES[name])
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module 'si_toolkit' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
