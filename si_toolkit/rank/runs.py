"""The run folder: manifest, append-only shards written atomically, resume, merge.

Layout and file schemas: docs/run-folder.md. A stage splits its work into units; each finished
unit is one parquet shard, written to a temporary file, fsynced and renamed into place. A unit
is done exactly when its shard exists, so a killed run resumes by skipping existing shards and
can never leave a half-written or duplicated unit behind.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import io
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from si_toolkit.errors import SIError
from si_toolkit.safeio import atomic_write_bytes, atomic_write_json, move_aside

__all__ = ["RunFolder", "open_run", "config_diff", "unit_seed", "Shard", "parse_shard", "MANIFEST_SCHEMA",
           "UNIT_PROMPTS", "Progress", "StagePlan", "plan_units", "merge_stage", "round_bounds", "set_prompt_counts",
           "set_prompt_ids"]

MANIFEST_SCHEMA = "si-toolkit/manifest/v1"
STAGES = ("sample", "score")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Shard:
    """`--shard I/N`: this process does the units u with u % N == I."""

    index: int = 0
    count: int = 1

    def owns(self, unit: int) -> bool:
        return unit % self.count == self.index


def parse_shard(text: str | None) -> Shard:
    if not text:
        return Shard()
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise SIError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/2")
    return Shard(int(match[1]), int(match[2]))


def unit_seed(base_seed: int, *parts: object) -> int:
    """A seed for one work unit that depends only on the run seed and the unit's identity.

    So a resumed or sharded run draws exactly the samples an uninterrupted run would.
    """
    digest = hashlib.sha256(json.dumps([base_seed, *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class RunFolder:
    """A run folder on disk. Constructing it touches nothing; methods read and write."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def has_manifest(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        if not self.has_manifest():
            raise SIError(f"{self.path}: not a run folder (no manifest.json); run `si rank` or `si sample` first")
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SIError(f"{self.manifest_path}: unreadable manifest ({err}); restore it or start a new run") from None
        if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
            raise SIError(f"{self.manifest_path}: not an si-toolkit manifest (schema {MANIFEST_SCHEMA} expected)")
        return data

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def update_stage(self, stage: str, **status: Any) -> None:
        manifest = self.read_manifest()
        manifest.setdefault("stages", {}).setdefault(stage, {}).update(status)
        self.write_manifest(manifest)

    # ------------------------------------------------------------------ shards
    def shard_dir(self, stage: str, set_name: str) -> Path:
        if stage not in STAGES or not _SAFE.match(set_name):
            raise ValueError(f"bad shard location {stage}/{set_name}")
        return self.path / "shards" / stage / set_name

    def done_units(self, stage: str, set_name: str) -> set[int]:
        folder = self.shard_dir(stage, set_name)
        if not folder.is_dir():
            return set()
        return {int(p.stem[1:]) for p in folder.glob("u*.parquet") if p.stem[1:].isdigit()}

    def write_shard(self, stage: str, set_name: str, unit: int, rows: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        rows.to_parquet(buffer, index=False)
        atomic_write_bytes(self.shard_dir(stage, set_name) / f"u{unit:05d}.parquet", buffer.getvalue())

    def read_shards(self, stage: str, set_name: str) -> pd.DataFrame:
        files = sorted(self.shard_dir(stage, set_name).glob("u*.parquet"))
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write_bytes(self.path / name, buffer.getvalue())

    def read_table(self, name: str) -> pd.DataFrame:
        path = self.path / name
        if not path.is_file():
            stage = {"samples.parquet": "si sample", "scores.parquet": "si score"}.get(name, "the stage")
            raise SIError(f"{path}: missing; run `{stage} {self.path}` first")
        try:
            return pd.read_parquet(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise SIError(f"{path}: unreadable parquet ({str(err).splitlines()[0]}); rerun the stage") from None


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
    keys = sorted(set(old) | set(new))
    diffs: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}")
    return diffs


def open_run(path: Path, manifest: dict[str, Any], *, force_new: bool = False) -> RunFolder:
    """Create the run folder, or reopen it when its config equals `manifest['config']`.

    A different config is refused with the differing keys named; `force_new` moves the old
    folder aside (nothing is deleted) and starts afresh.
    """
    run = RunFolder(path)
    if run.has_manifest():
        old = run.read_manifest()
        diffs = config_diff(old.get("config", {}), manifest["config"])
        if not diffs:
            return run
        if not force_new:
            raise SIError(
                f"{path}: this run folder was made with a different config (differs in: {', '.join(diffs)}); "
                "use another --out, or --force-new to move the old run aside and start again"
            )
        move_aside(path)
    elif path.exists() and any(path.iterdir()):
        raise SIError(f"{path}: exists and is not a run folder; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    manifest = {"schema": MANIFEST_SCHEMA, **manifest}
    manifest.setdefault("created", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    manifest.setdefault("git_sha", _git_sha())
    manifest.setdefault("stages", {})
    run.write_manifest(manifest)
    return run


def _git_sha() -> str | None:
    """The toolkit's own commit, when it runs from a checkout (recorded for reproducibility)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


# Work units, shared by the sampling and scoring stages ------------------------------------

UNIT_PROMPTS = 4  # prompts per work unit: small enough that a kill loses little work

Progress = Callable[[int], None]


@dataclass(frozen=True)
class StagePlan:
    """The units of one stage for one set: unit index -> prompt records.

    round_starts: the unit indices where a round of prompts begins (`si rank --until-decided`
    adds prompts in rounds; a run of fixed size is one round). Units never straddle a round.
    """

    set_name: str
    units: list[list[dict[str, Any]]]
    round_starts: tuple[int, ...] = (0,)


def round_bounds(manifest: dict[str, Any]) -> list[int]:
    """How many prompts a set has after each round: [n] for a run of fixed size; with
    `config.racing` the schedule start, start + step, ... up to max_prompts (the last round may
    add fewer). Fixed by the config, so a resumed run cuts the same units."""
    config = manifest["config"]
    racing = config.get("racing")
    if not racing:
        return [len(manifest["prompts"])]
    start, step, top = int(config["n_prompts"]), int(racing["round_prompts"]), int(racing["max_prompts"])
    return [*range(start, top, step), top]


def set_prompt_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """Prompts each set is to have: all of them in a fixed-size run; in a racing run the size of
    the latest recorded round (`racing.rounds` in the manifest) that sampled the set (0 before
    the first round is recorded). Each set's prompts are a prefix of the manifest's prompts."""
    if not manifest["config"].get("racing"):
        return {name: len(manifest["prompts"]) for name in manifest["sets"]}
    counts = {name: 0 for name in manifest["sets"]}
    for record in (manifest.get("racing") or {}).get("rounds", []):
        for name in record["sets"]:
            counts[name] = max(counts[name], int(record["n_prompts"]))
    return counts


def set_prompt_ids(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """set name -> the ids of the prompts it is to be scored on (see `set_prompt_counts`)."""
    ids = [str(p["id"]) for p in manifest["prompts"]]
    return {name: ids[:count] for name, count in set_prompt_counts(manifest).items()}


def plan_units(manifest: dict[str, Any]) -> list[StagePlan]:
    """Every set's units: its prompts cut into chunks of UNIT_PROMPTS within each round."""
    prompts = manifest["prompts"]
    chunks: list[list[dict[str, Any]]] = []
    starts: list[int] = []
    begin = 0
    for end in round_bounds(manifest):
        starts.append(len(chunks))
        chunks += [prompts[k : min(k + UNIT_PROMPTS, end)] for k in range(begin, end, UNIT_PROMPTS)]
        begin = end
    covered = list(itertools.accumulate(map(len, chunks)))  # prompts covered by units 0..u
    plans = []
    for name, count in set_prompt_counts(manifest).items():
        n_units = bisect.bisect_right(covered, count)  # counts are round bounds: a whole number of units
        plans.append(StagePlan(name, chunks[:n_units], tuple(s for s in starts if s < n_units) or (0,)))
    return plans


def merge_stage(run: RunFolder, stage: str, table: str, sort_keys: list[str]) -> bool:
    """When every unit of every set has its shard, write the merged, sorted table atomically.

    Checks that no unit is missing and no row is duplicated (sharded runs write into one folder).
    """
    manifest = run.read_manifest()
    plans = plan_units(manifest)
    missing = [
        f"{p.set_name}/u{u:05d}" for p in plans for u in range(len(p.units))
        if u not in run.done_units(stage, p.set_name)
    ]
    if missing:
        return False
    frame = pd.concat([run.read_shards(stage, p.set_name) for p in plans], ignore_index=True)
    dupes = frame.duplicated(subset=sort_keys, keep=False)
    if dupes.any():
        first = frame.loc[dupes, sort_keys].iloc[0].to_dict()
        raise SIError(f"{run.path}: duplicate {stage} rows (e.g. {first}); remove the run's shards/{stage} and rerun")
    run.write_table(table, frame.sort_values(sort_keys, kind="stable").reset_index(drop=True))
    return True
