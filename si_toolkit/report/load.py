"""Read a run folder for the report: manifest.json, estimates.json and the two Parquet tables.

The report needs nothing but the run folder (docs/run-folder.md): no model, no torch. The
estimates file is checked against its schema here, once, so the renderers can index it
without guarding every key; a malformed file raises `SIError` naming the file, the field and
the fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from si_toolkit.errors import SIError
from si_toolkit.tensors import SCORE_COLUMNS

__all__ = ["RunData", "load_run", "validate_estimates", "ESTIMATES_SCHEMA"]

ESTIMATES_SCHEMA = "si-toolkit/estimates/v1"
_SAMPLE_COLUMNS = ["set", "prompt_id", "variant", "variant_label", "replicate", "text", "format_ok"]
_SCORE_COLUMNS = list(SCORE_COLUMNS)
# Keys every set entry must have for the headline and ranking; the others are shown as "n/a"
# when absent or null (e.g. CoT share is undefined when the full-response MI is 0).
_REQUIRED_SET_NUMBERS = ("K", "n_prompts", "replicates", "si")
_OPTIONAL_SET_NUMBERS = (
    "log_K", "chance", "mi_col_nats", "mi_col_bits", "mi_row_nats", "mi_sym_nats",
    "accuracy", "cot_share", "format_rate",
)
_OPTIONAL_SET_INTERVALS = ("mi_col_ci", "accuracy_ci", "cot_share_ci")
_REQUIRED_RANK_KEYS = ("rank", "set", "si")


@dataclass(frozen=True)
class RunData:
    """Everything the report reads from one run folder.

    `samples` and `scores` are None when their file is absent (the report then omits the
    evidence section and says why); `scores` holds only the `cot` span rows.
    """

    run_dir: Path
    manifest: dict[str, Any]
    estimates: dict[str, Any]
    samples: pd.DataFrame | None
    scores: pd.DataFrame | None


def load_run(run_dir: Path) -> RunData:
    """Load and check the run folder `run_dir`; raise SIError for a missing or malformed file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SIError(f"{run_dir}: run folder not found; pass the folder `si rank` wrote (e.g. reports/<run>)")
    manifest = _read_json(run_dir / "manifest.json", f"run `si sample {run_dir}` (or `si rank`) to create it")
    if not isinstance(manifest, dict):
        raise SIError(
            f"{run_dir / 'manifest.json'}: expected a JSON object; the run folder is damaged, rerun `si rank`"
        )
    est_path = run_dir / "estimates.json"
    estimates = _read_json(est_path, f"run `si estimate {run_dir}` first")
    validate_estimates(estimates, est_path)
    return RunData(
        run_dir=run_dir,
        manifest=manifest,
        estimates=estimates,
        samples=_read_parquet(run_dir / "samples.parquet", _SAMPLE_COLUMNS, None),
        scores=_read_parquet(run_dir / "scores.parquet", _SCORE_COLUMNS, [("span", "=", "cot")]),
    )


def _read_json(path: Path, fix: str) -> Any:
    if not path.is_file():
        raise SIError(f"{path}: not found; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SIError(f"{path}: not valid UTF-8 (byte {err.start}); {fix}") from None
    except json.JSONDecodeError as err:
        raise SIError(f"{path}: malformed JSON at line {err.lineno} column {err.colno} ({err.msg}); {fix}") from None


def _read_parquet(path: Path, columns: list[str], filters: list[tuple[str, str, str]] | None) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path, columns=columns, filters=filters)
    except (OSError, ValueError, KeyError) as err:
        # pyarrow raises ArrowInvalid (a ValueError) for a damaged file and KeyError-like
        # errors for a missing column; either way the stage that wrote it must run again.
        stage = "sample" if path.name.startswith("samples") else "score"
        raise SIError(
            f"{path}: cannot read columns {columns} ({err}); rerun `si {stage} {path.parent}` to rewrite it"
        ) from None
    return table.to_pandas()


def validate_estimates(est: Any, path: Path) -> None:
    """Check `est` (parsed estimates.json) against the schema in docs/run-folder.md.

    Raises SIError naming `path`, the field and the fix. Required: `sets` (a non-empty object)
    and `ranking` (a list naming those sets); per set K, n_prompts, replicates, si and si_ci.
    Other documented fields may be absent or null; when present they must have the right type.
    """
    fix = f"run `si estimate {path.parent}` to rewrite it"
    if not isinstance(est, dict):
        raise SIError(f"{path}: expected a JSON object, got {type(est).__name__}; {fix}")
    schema = est.get("schema")
    if schema != ESTIMATES_SCHEMA:
        raise SIError(f"{path}: field 'schema' is {schema!r}, expected {ESTIMATES_SCHEMA!r}; {fix}")
    sets = est.get("sets")
    if not isinstance(sets, dict) or not sets:
        raise SIError(f"{path}: field 'sets' must be a non-empty object of per-set estimates; {fix}")
    for name, entry in sets.items():
        _check_set(entry, f"{path}: sets[{name!r}]", fix)
    _check_ranking(est.get("ranking"), set(sets), path, fix)
    _check_reliability(est.get("reliability"), path, fix)
    settings = est.get("settings", {})
    if not isinstance(settings, dict):
        raise SIError(f"{path}: field 'settings' must be an object; {fix}")


def _check_set(entry: Any, where: str, fix: str) -> None:
    if not isinstance(entry, dict):
        raise SIError(f"{where} must be an object, got {type(entry).__name__}; {fix}")
    for key in _REQUIRED_SET_NUMBERS:
        if not _is_number(entry.get(key)):
            raise SIError(f"{where}.{key} must be a number, got {entry.get(key)!r}; {fix}")
    if entry["K"] < 2 or entry["n_prompts"] < 1:
        raise SIError(f"{where}: K = {entry['K']}, n_prompts = {entry['n_prompts']}; need K >= 2, n >= 1; {fix}")
    _check_interval(entry.get("si_ci"), f"{where}.si_ci", fix, required=True)
    for key in _OPTIONAL_SET_NUMBERS:
        if entry.get(key) is not None and not _is_number(entry[key]):
            raise SIError(f"{where}.{key} must be a number or null, got {entry[key]!r}; {fix}")
    for key in _OPTIONAL_SET_INTERVALS:
        _check_interval(entry.get(key), f"{where}.{key}", fix, required=False)
    _check_confusion(entry.get("confusion"), int(entry["K"]), where, fix)
    _check_items(entry.get("per_principle"), f"{where}.per_principle", ("si",), ("si_ci",), fix)
    _check_items(entry.get("per_variant"), f"{where}.per_variant", ("si", "accuracy"), (), fix)


def _check_items(items: Any, where: str, numbers: tuple[str, ...], intervals: tuple[str, ...], fix: str) -> None:
    """A list of objects whose `numbers` are numbers or null and `intervals` [low, high] or null."""
    if items is None:
        return
    if not (isinstance(items, list) and all(isinstance(i, dict) for i in items)):
        raise SIError(f"{where} must be a list of objects; {fix}")
    for n, item in enumerate(items):
        for key in numbers:
            if item.get(key) is not None and not _is_number(item[key]):
                raise SIError(f"{where}[{n}].{key} must be a number or null, got {item[key]!r}; {fix}")
        for key in intervals:
            _check_interval(item.get(key), f"{where}[{n}].{key}", fix, required=False)


def _check_interval(value: Any, where: str, fix: str, *, required: bool) -> None:
    if value is None and not required:
        return
    if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise SIError(f"{where} must be [low, high] numbers, got {value!r}; {fix}")


def _check_confusion(value: Any, k: int, where: str, fix: str) -> None:
    if value is None:
        return
    ok = (
        isinstance(value, list)
        and len(value) == k
        and all(isinstance(row, list) and len(row) == k and all(_is_number(v) for v in row) for row in value)
    )
    if not ok:
        raise SIError(f"{where}.confusion must be a {k}x{k} list of lists of numbers (K = {k}); {fix}")


def _check_ranking(ranking: Any, names: set[str], path: Path, fix: str) -> None:
    if not isinstance(ranking, list) or not ranking:
        raise SIError(f"{path}: field 'ranking' must be a non-empty list; {fix}")
    for n, row in enumerate(ranking):
        where = f"{path}: ranking[{n}]"
        if not isinstance(row, dict):
            raise SIError(f"{where} must be an object; {fix}")
        missing = [k for k in _REQUIRED_RANK_KEYS if k not in row]
        if missing:
            raise SIError(f"{where} lacks {missing}; {fix}")
        if not (_is_number(row["rank"]) and _is_number(row["si"])):
            raise SIError(f"{where}: rank and si must be numbers, got {row['rank']!r} and {row['si']!r}; {fix}")
        if row["set"] not in names:
            raise SIError(f"{where}.set = {row['set']!r} is not a key of 'sets'; {fix}")
        if row.get("delta_ci") is not None:
            _check_interval(row["delta_ci"], f"{where}.delta_ci", fix, required=True)
        for key in ("delta_to_leader", "p_value", "p_floor", "p_rank1"):
            if row.get(key) is not None and not _is_number(row[key]):
                raise SIError(f"{where}.{key} must be a number or null, got {row[key]!r}; {fix}")
        interval = row.get("rank_interval")
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                         and all(isinstance(v, int) and not isinstance(v, bool) for v in interval)):
            raise SIError(f"{where}.rank_interval must be [low, high] whole ranks or null, got {interval!r}; {fix}")


def _check_reliability(value: Any, path: Path, fix: str) -> None:
    """`reliability` (absent in files written before it existed): null or an object with a reading."""
    if value is None:
        return
    if not isinstance(value, dict) or not isinstance(value.get("reading"), str):
        raise SIError(f"{path}: field 'reliability' must be an object with a text 'reading', got {value!r}; {fix}")
    for key in ("rho", "rho_sb"):
        if value.get(key) is not None and not _is_number(value[key]):
            raise SIError(f"{path}: reliability.{key} must be a number or null, got {value[key]!r}; {fix}")


def _is_number(value: Any) -> bool:
    """True for a finite int or float; bool is excluded although it subclasses int."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
