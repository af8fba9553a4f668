"""The rank job from Python: `rank()`, `load_run()`, `estimate()` and the objects they return.

`si rank` calls `rank()` too, so a ranking made in a notebook and one made on the command line
are the same run folder, the same report and the same resume. Inputs may be files (paths) or
objects (`PrincipleSet`, a mapping with the YAML keys, `PromptSet`, prompt records or a
DataFrame): objects are written into the run folder's `inputs/`, so the command the manifest
records (`manifest.json` → `command`) reproduces the run from files alone.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from si_toolkit.errors import SIError
from si_toolkit.principles import PrincipleSet, load_principle_set
from si_toolkit.prompts import PromptSet, load_prompts
from si_toolkit.rank.runs import RunFolder

__all__ = ["Ranking", "Run", "rank", "prepare_rank", "load_run", "estimate"]

SetLike = str | Path | PrincipleSet | dict[str, Any]
PromptsLike = str | Path | PromptSet | Sequence[dict[str, Any]] | Any  # Any: a pandas DataFrame


def _table(estimates: dict[str, Any], manifest: dict[str, Any]) -> Any:
    """One row per set in rank order with every column of si.csv (one definition: report.tables)."""
    import io

    import pandas as pd

    from si_toolkit.report.tables import si_csv

    # Only empty cells are missing values: a set may well be called "null" or "NA".
    return pd.read_csv(io.StringIO(si_csv(estimates, manifest)), keep_default_na=False, na_values=[""])


@dataclass
class Ranking:
    """The result of `rank()`: where the run folder is, its estimates, and the ranking table.

    table : pandas.DataFrame, one row per set in rank order, the columns of si.csv.
    estimates : dict, estimates.json (every SI-SPEC quantity per set, with CIs).
    """

    run_dir: Path
    estimates: dict[str, Any]
    report_path: Path | None
    manifest: dict[str, Any] = field(repr=False)
    reused: bool = False  # the run folder was already finished: nothing was sampled or scored

    @property
    def table(self) -> Any:
        return _table(self.estimates, self.manifest)

    @property
    def leader(self) -> str:
        return str(self.estimates["ranking"][0]["set"])

    @property
    def racing(self) -> dict[str, Any] | None:
        """With `until_decided`: the rounds (size, sets sampled, decisions) and the result (why
        the race stopped, prompts per set, model calls against every set at max_prompts)."""
        racing = self.manifest.get("racing")
        return dict(racing) if racing else None

    def _repr_html_(self) -> str:
        import html

        report = f" — report: {html.escape(str(self.report_path))}" if self.report_path else ""
        return (f"<p><b>Sufficiency Index ranking</b> ({html.escape(str(self.run_dir))}){report}</p>"
                + self.table.to_html(index=False, na_rep="n/a", float_format=lambda v: f"{v:.3f}"))


@dataclass
class Run:
    """A finished (or partial) run folder, read back: tables as pandas DataFrames."""

    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return RunFolder(self.path).read_manifest()

    @property
    def samples(self) -> Any:
        return RunFolder(self.path).read_table("samples.parquet")

    @property
    def scores(self) -> Any:
        return RunFolder(self.path).read_table("scores.parquet")

    @property
    def estimates(self) -> dict[str, Any]:
        import json

        path = self.path / "estimates.json"
        if not path.is_file():
            raise SIError(f"{path}: not found; run `si estimate {self.path}` (or finish the run) first")
        return dict(json.loads(path.read_text(encoding="utf-8")))

    @property
    def table(self) -> Any:
        return _table(self.estimates, self.manifest)

    def estimate(self, *, span: str = "cot", critic: str = "sum", n_bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
        """Every SI-SPEC quantity for another span or critic (nothing is written)."""
        return estimate(self.path, span=span, critic=critic, n_bootstrap=n_bootstrap, seed=seed)

    def _repr_html_(self) -> str:
        import html

        return f"<p><b>si-toolkit run</b> {html.escape(str(self.path))}</p>" + self.table.to_html(index=False, na_rep="n/a")


def load_run(path: str | Path) -> Run:
    """Open a run folder written by `rank()` or `si rank`."""
    run = RunFolder(Path(path))
    run.read_manifest()  # a clear SIError when this is not a run folder
    return Run(Path(path))


def estimate(source: str | Path, *, span: str = "cot", critic: str = "sum", n_bootstrap: int = 2000,
             seed: int = 0) -> dict[str, Any]:
    """Estimates from a run folder or a bare scores.parquet, without writing anything."""
    from si_toolkit.rank.pipeline import estimate_stage

    path = Path(source)
    if not path.exists():
        raise SIError(f"{path}: no such run folder or scores file")
    return estimate_stage(path, span=span, critic=critic, n_bootstrap=n_bootstrap, seed=seed, write=False)


def _load_sets(sets: SetLike | Sequence[SetLike]) -> list[PrincipleSet]:
    items = [sets] if isinstance(sets, (str, Path, PrincipleSet, dict)) else list(sets)
    if not items:
        raise SIError("no principle sets given; e.g. rank(['principles/a.yaml', 'principles/b.yaml'])")
    loaded = []
    for item in items:
        if isinstance(item, PrincipleSet):
            loaded.append(item)
        elif isinstance(item, dict):
            loaded.append(PrincipleSet.from_dict(item))
        elif isinstance(item, (str, Path)):
            loaded.append(load_principle_set(item))
        else:
            raise SIError(f"a principle set must be a file path, a PrincipleSet or a mapping, got {type(item).__name__}")
    seen: dict[str, str] = {}
    for s in loaded:
        if s.name in seen:
            raise SIError(f"{s.path or s.name}: set name '{s.name}' is used twice; give one of them another `name:`")
        seen[s.name] = s.path
    return loaded


def _load_prompt_set(prompts: PromptsLike, n_prompts: int | None) -> PromptSet:
    if isinstance(prompts, (str, Path)):
        return load_prompts(prompts, n=n_prompts)
    if isinstance(prompts, PromptSet):
        chosen = prompts
    elif hasattr(prompts, "columns"):
        chosen = PromptSet.from_dataframe(prompts)
    else:
        chosen = PromptSet.from_records(prompts)
    if n_prompts is not None:
        if n_prompts > len(chosen):
            raise SIError(f"{chosen.source}: asked for n_prompts = {n_prompts} but it holds only {len(chosen)}")
        chosen = PromptSet(chosen.name, chosen.source, chosen.prompts[:n_prompts])
    return chosen


def _reproduce_command(set_files: list[str], prompt_spec: str, config: Any, profile: str) -> str:
    """The `si rank` line that redoes this run from files, every setting explicit."""
    s = config.sampling
    args = ["si", "rank", *set_files, "--prompts", prompt_spec, "--n-prompts", str(config.n_prompts),
            "--replicates", str(s.replicates), "--max-new-tokens", str(s.max_new_tokens), "--seed", str(s.seed),
            "--model", config.model, "--backend", config.backend, "--dtype", config.dtype, "--profile", profile]
    if not config.prefill:
        args.append("--no-prefill")
    if config.racing is not None:
        args += ["--until-decided", "--max-prompts", str(config.racing.max_prompts),
                 "--round-prompts", str(config.racing.round_prompts)]
    return shlex.join(args)


def _racing_prompts(prompts: PromptsLike, n_prompts: int | None, max_prompts: int | None,
                    round_prompts: int | None, profile: str) -> tuple[PromptSet, int, Any]:
    """For `until_decided`: the first max_prompts prompts, the first round's size, the racing config.

    The first round has n_prompts (default: the profile's); max_prompts defaults to 4 times that,
    within the prompt set; each later round adds round_prompts (default: the first round's size).
    """
    from si_toolkit.rank.pipeline import PROFILES, RacingConfig

    pool = _load_prompt_set(prompts, None)  # every prompt, in the fixed (prefix-consistent) order
    start = PROFILES[profile]["n_prompts"] if n_prompts is None else n_prompts
    if start < 1 or start > len(pool):
        raise SIError(f"{pool.source}: asked for n_prompts = {start} but it holds {len(pool)} prompts; "
                      f"give --n-prompts between 1 and {len(pool)}")
    top = min(4 * start, len(pool)) if max_prompts is None else max_prompts
    if top < start:
        raise SIError(f"--max-prompts {top} is below the first round's {start} prompts (--n-prompts or the "
                      f"{profile} profile); give --max-prompts >= {start} or a smaller --n-prompts")
    if top > len(pool):
        raise SIError(f"--max-prompts {top}: {pool.source} holds only {len(pool)} prompts; give --max-prompts "
                      f"<= {len(pool)} or add prompts")
    racing = RacingConfig(max_prompts=top, round_prompts=start if round_prompts is None else round_prompts)
    return PromptSet(pool.name, pool.source, pool.prompts[:top]), start, racing


def prepare_rank(sets: SetLike | Sequence[SetLike], prompts: PromptsLike = "builtin:mixed", model: str = "embedded",
                 profile: str = "quick", *, n_prompts: int | None = None, replicates: int | None = None,
                 max_new_tokens: int | None = None, seed: int = 0, backend: str = "hf", dtype: str = "bfloat16",
                 out: str | Path | None = None, force_new: bool = False, prefill: bool = True,
                 until_decided: bool = False, max_prompts: int | None = None,
                 round_prompts: int | None = None) -> RunFolder:
    """Validate the inputs and create (or reopen, to resume) the run folder; nothing is sampled."""
    from si_toolkit.models import resolve_model
    from si_toolkit.rank.pipeline import PROFILES, RankConfig, default_run_dir, new_manifest
    from si_toolkit.rank.runs import open_run
    from si_toolkit.safeio import atomic_write_text
    from si_toolkit.backends.base import SamplingConfig

    if profile not in PROFILES:
        raise SIError(f"profile {profile!r}: use one of {list(PROFILES)}")
    preset = PROFILES[profile]
    principle_sets = _load_sets(sets)
    # A file or builtin set gives the profile's first n prompts; prompts passed as objects are
    # used whole unless n_prompts says otherwise (the caller chose them).
    in_memory = not isinstance(prompts, (str, Path))
    racing = None
    if until_decided:
        prompt_set, start, racing = _racing_prompts(prompts, n_prompts, max_prompts, round_prompts, profile)
    elif max_prompts is not None or round_prompts is not None:
        raise SIError("--max-prompts and --round-prompts apply only with --until-decided; add --until-decided "
                      "or drop them")
    else:
        prompt_set = _load_prompt_set(prompts, n_prompts if n_prompts is not None or in_memory else preset["n_prompts"])
        start = len(prompt_set)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens or preset["max_new_tokens"],
                              replicates=replicates or preset["replicates"], seed=seed)
    prompt_spec = prompt_set.source if in_memory else str(prompts)
    config = RankConfig(model=model, backend=backend, dtype=dtype, prompts=prompt_spec, n_prompts=start,
                        prefill=prefill, sampling=sampling, racing=racing)
    run_dir = Path(out) if out is not None else default_run_dir(principle_sets, profile, config)
    if out is None and racing is not None:  # its own folder: a fixed-size run of the same sets keeps its own
        run_dir = run_dir.with_name(f"{run_dir.name}-until-decided{racing.max_prompts}")
    # Sets and prompts given as objects are written into the run folder, so the recorded command
    # reproduces the run from files alone.
    inputs = {f"inputs/{s.name}.yaml": s.to_yaml() for s in principle_sets if not s.path}
    set_files = [s.path or str(run_dir / "inputs" / f"{s.name}.yaml") for s in principle_sets]
    if in_memory:
        inputs["inputs/prompts.jsonl"] = prompt_set.to_jsonl()
        prompt_spec = str(run_dir / "inputs" / "prompts.jsonl")
    command = _reproduce_command(set_files, prompt_spec, config, profile)
    manifest = new_manifest(config, principle_sets, prompt_set, command, resolve_model(model).name)
    run = open_run(run_dir, manifest, force_new=force_new)
    for relative, text in inputs.items():
        atomic_write_text(run.path / relative, text)
    return run


def rank(sets: SetLike | Sequence[SetLike], prompts: PromptsLike = "builtin:mixed", model: str = "embedded",
         profile: str = "quick", *, n_prompts: int | None = None, replicates: int | None = None,
         max_new_tokens: int | None = None, seed: int = 0, backend: str = "hf", dtype: str = "bfloat16",
         out: str | Path | None = None, force_new: bool = False, prefill: bool = True, report: bool = True,
         trust_remote_code: bool = False, progress: Any = None, until_decided: bool = False,
         max_prompts: int | None = None, round_prompts: int | None = None) -> Ranking:
    """Rank principle sets by SI: sample, score, estimate and write the report into a run folder.

    Parameters
    ----------
    sets : principle-set YAML paths, `PrincipleSet` objects or mappings with the YAML keys.
    prompts : ``builtin:mixed|arithmetic|open``, a prompt file, a `PromptSet`, a list of records
        (``{"prompt": ..., "id": ...}``) or a DataFrame with a ``prompt`` column.
    model : ``embedded``, a model folder, or a Hugging Face id in the local cache.
    profile : ``quick`` (minutes on a CPU; wide CIs) or ``standard`` (a GPU host).
    n_prompts, replicates, max_new_tokens : override the profile's sizes.
    out : the run folder (default ``reports/<set names>-<profile>``, or ``-n<N>-r<R>-t<T>`` when the
        sizes are no profile's); rerunning resumes it.
    progress : a factory ``(stage, total) -> context manager yielding advance(n)``, or None.
    until_decided : add prompts in rounds (n_prompts first, then round_prompts more per round, up
        to max_prompts; defaults: the profile's n, that n again, 4 times n) and stop giving them
        to a set once its rank is decided (SI-SPEC §5; see `si_toolkit.rank.racing`).
        ``Ranking.racing`` then holds the rounds, the decisions and the model calls saved.

    Returns a `Ranking` (``.table`` is a DataFrame; notebooks display it as a table).
    Raises `SIError` for bad input, naming the file or field and the fix.
    """
    from si_toolkit.rank.pipeline import is_finished, run_rank
    from si_toolkit.rank.racing import run_racing

    run = prepare_rank(sets, prompts, model, profile, n_prompts=n_prompts, replicates=replicates,
                       max_new_tokens=max_new_tokens, seed=seed, backend=backend, dtype=dtype, out=out,
                       force_new=force_new, prefill=prefill, until_decided=until_decided,
                       max_prompts=max_prompts, round_prompts=round_prompts)
    reused = is_finished(run)
    runner = run_racing if until_decided else run_rank
    estimates = runner(run, trust_remote_code=trust_remote_code, progress=progress)
    report_path = None
    if report:
        from si_toolkit.report import build_report

        report_path = build_report(run.path).html
    return Ranking(run_dir=run.path, estimates=estimates, report_path=report_path, manifest=run.read_manifest(),
                   reused=reused)
