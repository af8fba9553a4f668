"""Safe reading of user files and atomic writing of results (house rule 11).

Every file the toolkit writes goes to a temporary file in the same folder, is fsynced, and is
renamed into place, so a killed process leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from si_toolkit.errors import SIError

__all__ = ["read_yaml_mapping", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "move_aside",
           "claim_result_folder"]

MAX_YAML_BYTES = 1_000_000


class _NoAliasSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases: they allow 'billion laughs' expansion bombs."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise SIError(
                f"{self.name}: line {mark.line + 1}: YAML aliases (*name) are not allowed; write the value out"
            )
        return super().compose_node(parent, index)


class _NoAliasTextTagLoader(_NoAliasSafeLoader):
    """_NoAliasSafeLoader that reads application tags (``!function utils.f``) as their text."""


_NoAliasTextTagLoader.add_multi_constructor("!", lambda loader, _suffix, node: (
    loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None))


def read_yaml_mapping(path: Path, what: str, *, tags_as_text: bool = False) -> dict[str, Any]:
    """Read a UTF-8 YAML file holding a mapping, with SIError messages naming the file and line.

    `tags_as_text` reads ``!tag value`` as the string ``value`` (other files' formats, such as
    lm-eval task files, name Python functions that way); nothing is ever constructed or imported.
    """
    if not path.is_file():
        raise SIError(f"{path}: {what} file not found; check the path")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise SIError(f"{path}: file is over 1 MB; a {what} file should be a few KB")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SIError(f"{path}: not valid UTF-8 (byte {err.start}); save the file as UTF-8") from None
    loader = None
    try:
        loader = (_NoAliasTextTagLoader if tags_as_text else _NoAliasSafeLoader)(text)  # rejects control characters
        loader.name = str(path)
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SIError(f"{path}:{line} malformed YAML ({problem}); fix the syntax") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise SIError(f"{path}: expected a YAML mapping (key: value lines) for a {what}, got {type(data).__name__}")
    return data


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via temp file + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and reports are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def move_aside(path: Path) -> Path:
    """Rename a folder to `<name>.replaced-<UTC time>` beside it (nothing is deleted); return the new path."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 1
    while target.exists():  # two replacements within one second
        n += 1
        target = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    os.replace(path, target)
    return target


def claim_result_folder(path: Path, *, force_new: bool) -> Path | None:
    """Make `path` ready for a command's results without overwriting earlier ones.

    A missing or empty folder is used as it is. A folder holding anything is refused (SIError),
    or with `force_new` moved aside (see `move_aside`); returns where it was moved, else None.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SIError(f"{path}: exists and is not a folder; choose another --out")
    if not path.is_dir() or not any(path.iterdir()):
        return None
    if not force_new:
        raise SIError(f"{path}: holds the results of an earlier run; use another --out, or --force-new to "
                      f"move it aside (to {path.name}.replaced-<time>) and start afresh")
    return move_aside(path)
