"""Run folder: manifest, atomic shards, config refusal, shard arithmetic."""

from __future__ import annotations

import pandas as pd
import pytest

from si_toolkit.errors import SIError
from si_toolkit.rank.runs import RunFolder, config_diff, open_run, parse_shard, unit_seed


def _manifest(n: int = 4) -> dict:
    return {"config": {"model": "m", "sampling": {"seed": 0, "replicates": 1}, "n_prompts": n}, "sets": {}, "prompts": []}


def test_open_run_creates_and_reopens_same_config(tmp_path) -> None:
    run = open_run(tmp_path / "r", _manifest())
    assert run.read_manifest()["schema"] == "si-toolkit/manifest/v1"
    again = open_run(tmp_path / "r", _manifest())
    assert again.path == run.path


def test_changed_config_is_refused_with_keys_named(tmp_path) -> None:
    open_run(tmp_path / "r", _manifest())
    changed = _manifest(8)
    changed["config"]["sampling"]["seed"] = 3
    with pytest.raises(SIError, match=r"differs in: n_prompts, sampling\.seed.*--force-new"):
        open_run(tmp_path / "r", changed)


def test_force_new_moves_old_run_aside_without_deleting(tmp_path) -> None:
    run = open_run(tmp_path / "r", _manifest())
    run.write_shard("sample", "s", 0, pd.DataFrame({"a": [1]}))
    open_run(tmp_path / "r", _manifest(8), force_new=True)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("r.replaced-")]
    assert len(moved) == 1 and (moved[0] / "shards/sample/s/u00000.parquet").is_file()
    assert RunFolder(tmp_path / "r").done_units("sample", "s") == set()


def test_shards_are_atomic_and_listed(tmp_path) -> None:
    run = open_run(tmp_path / "r", _manifest())
    run.write_shard("score", "set-a", 3, pd.DataFrame({"x": [1.0, 2.0]}))
    run.write_shard("score", "set-a", 0, pd.DataFrame({"x": [0.5]}))
    assert run.done_units("score", "set-a") == {0, 3}
    assert not list((tmp_path / "r/shards/score/set-a").glob(".*tmp"))
    assert run.read_shards("score", "set-a")["x"].tolist() == [0.5, 1.0, 2.0]


def test_shard_dir_rejects_unsafe_set_names(tmp_path) -> None:
    with pytest.raises(ValueError):
        RunFolder(tmp_path).shard_dir("sample", "../../x")


def test_config_diff_nested() -> None:
    assert config_diff({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 0}) == ["b.c", "d"]


def test_parse_shard() -> None:
    shard = parse_shard("1/3")
    assert [u for u in range(7) if shard.owns(u)] == [1, 4]
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(SIError, match="--shard"):
            parse_shard(bad)


def test_unit_seed_depends_on_identity_only() -> None:
    assert unit_seed(0, "set", 1) == unit_seed(0, "set", 1)
    assert len({unit_seed(0, "set", 1), unit_seed(0, "set", 2), unit_seed(1, "set", 1), unit_seed(0, "other", 1)}) == 4


def test_not_a_run_folder(tmp_path) -> None:
    with pytest.raises(SIError, match="not a run folder"):
        RunFolder(tmp_path).read_manifest()
    (tmp_path / "manifest.json").write_text("{bad json")
    with pytest.raises(SIError, match="unreadable manifest"):
        RunFolder(tmp_path).read_manifest()


def _units_manifest(n_prompts: int, racing: dict | None = None, rounds: list | None = None) -> dict:
    config = {"n_prompts": n_prompts, "sampling": {"seed": 0, "replicates": 1}, "racing": racing}
    manifest = {"config": config, "sets": {"a": {"variant_texts": ["x", "y"]}, "b": {"variant_texts": ["x", "y"]}},
                "prompts": [{"id": f"p{i:02d}", "text": "t"} for i in range(racing["max_prompts"] if racing else n_prompts)]}
    if rounds is not None:
        manifest["racing"] = {"rounds": rounds}
    return manifest


def test_plan_units_of_a_fixed_run_are_chunks_of_four() -> None:
    from si_toolkit.rank.runs import plan_units, round_bounds

    manifest = _units_manifest(10)
    assert round_bounds(manifest) == [10]
    for plan in plan_units(manifest):
        assert [len(u) for u in plan.units] == [4, 4, 2] and plan.round_starts == (0,)


def test_racing_units_follow_the_recorded_rounds_and_never_straddle_one() -> None:
    from si_toolkit.rank.runs import plan_units, round_bounds, set_prompt_ids
    from si_toolkit.rank.sampling import unit_groups

    racing = {"max_prompts": 16, "round_prompts": 5}
    # Rounds end at 6, 11, 16 prompts: 6 = 4 + 2, then 5 = 4 + 1 twice.
    assert round_bounds(_units_manifest(6, racing)) == [6, 11, 16]
    rounds = [{"round": 1, "n_prompts": 6, "sets": ["a", "b"]}, {"round": 2, "n_prompts": 11, "sets": ["a"]}]
    manifest = _units_manifest(6, racing, rounds)
    plans = {p.set_name: p for p in plan_units(manifest)}
    assert [len(u) for u in plans["a"].units] == [4, 2, 4, 1] and plans["a"].round_starts == (0, 2)
    assert [len(u) for u in plans["b"].units] == [4, 2] and plans["b"].round_starts == (0,)
    assert set_prompt_ids(manifest) == {"a": [f"p{i:02d}" for i in range(11)], "b": [f"p{i:02d}" for i in range(6)]}
    # Grouped for one backend call within a round only (64 // (4 prompts x 2 variants) = 8 units fit).
    assert unit_groups(manifest, plans["a"]) == [range(0, 2), range(2, 4)]
    # A set that re-enters in round 3 gets round 2's prompts too; before any round, nothing.
    rounds.append({"round": 3, "n_prompts": 16, "sets": ["a", "b"]})
    plans = {p.set_name: p for p in plan_units(_units_manifest(6, racing, rounds))}
    assert sum(map(len, plans["b"].units)) == 16 and plans["b"].round_starts == (0, 2, 4)
    assert all(p.units == [] for p in plan_units(_units_manifest(6, racing, [])))
