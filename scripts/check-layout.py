#!/usr/bin/env python3
"""Check the package layout: no import cycles, no upward imports, no module over the size limit.

    python scripts/check-layout.py        # prints each problem, exits 1 if there is any

The layers, top to bottom (a module may import only from its own package or from a layer below
its own; the order is the data flow, docs/architecture.md):
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "si_toolkit"
MAX_LINES = 400

# Each layer is a list of top-level parts of si_toolkit (a sub-package or a module); a part may
# import from parts in lower layers, never from parts in higher ones or in the same layer (other
# than itself), so the parts of one layer stay independent of each other.
LAYERS: list[list[str]] = [
    ["cli"],
    ["__init__", "api"],              # the public Python API (si_toolkit/__init__.py + api/)
    ["confirm"],
    ["evolve"],
    ["train"],
    ["rank"],
    ["report"],
    ["backends"],
    ["principles", "prompts"],
    ["chat"],
    ["models"],
    ["tensors", "estimators", "data"],
    ["safeio"],
    ["errors", "_version", "_callable", "__main__"],
]
__doc__ = (__doc__ or "") + "\n".join("    " + ", ".join(layer) for layer in LAYERS) + "\n"
# `python -m si_toolkit` runs the CLI: the entry module sits outside the layers.
OUTSIDE = {"__main__"}


def part_of(module: str) -> str:
    """'si_toolkit.rank.pipeline' -> 'rank'; 'si_toolkit' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(part: str) -> int:
    for index, layer in enumerate(LAYERS):
        if part in layer:
            return index
    raise SystemExit(f"check-layout: si_toolkit/{part} is in no layer; add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every si_toolkit module this file imports, at any depth (lazy imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("si_toolkit"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("si_toolkit"):
                continue
            for alias in node.names:  # `from si_toolkit.x import y` may import the module x.y
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _is_module(candidate) else base)
    return found


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search, colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def check() -> list[str]:
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        n_lines = len(path.read_text(encoding="utf-8").splitlines())
        if n_lines > MAX_LINES:
            problems.append(f"{path.relative_to(ROOT.parent)}: {n_lines} lines (limit {MAX_LINES}); split it "
                            "into private modules re-exported by the package's __all__")
        targets = {t for t in imports_of(path, name) if t != name}
        graph[name] = targets
        here = part_of(name)
        if here in OUTSIDE:
            continue
        for target in sorted(targets):
            there = part_of(target)
            if there == here or there in OUTSIDE:
                continue
            if layer_of(there) <= layer_of(here):
                problems.append(f"{path.relative_to(ROOT.parent)}: imports {target}, which is "
                                f"{'above' if layer_of(there) < layer_of(here) else 'beside'} it "
                                f"({there} vs {here}); pass the value in or move the code down")
    # Package __init__ modules re-export their children, so child -> parent-package edges are
    # not cycles of substance; every other edge counts, lazy imports included.
    trimmed = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    cycle = find_cycle(trimmed)
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    print(f"check-layout: {len(problems)} problem(s) in si_toolkit/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
