"""The racing part of a report (`si rank --until-decided`): which ranks are decided, how many
prompts each set got, and the model calls saved against sampling every set at --max-prompts.

Reads the `racing` block the rank stage writes into manifest.json (rounds, decisions, result);
nothing is recomputed here. `si rank` prints the same table and sentence in the terminal.
"""

from __future__ import annotations

from typing import Any

from si_toolkit.report.document import Table

__all__ = ["racing_table", "racing_summary", "DECISIONS"]

# The rank stage's decision codes (manifest racing.rounds[].decided), as the report words them.
DECISIONS = {
    "rank_interval": "rank decided: its rank interval has width 1",
    "below_leader": "not first: the CI of its ΔSI to the leader excludes 0 (its place among the others may be open)",
    "clear_leader": "first: no other set is tied with it",
}


def _block(manifest: dict[str, Any]) -> dict[str, Any] | None:
    racing = manifest.get("racing")
    if not isinstance(racing, dict) or not isinstance(racing.get("rounds"), list) or not racing["rounds"]:
        return None
    return racing


def racing_summary(manifest: dict[str, Any]) -> str | None:
    """One paragraph: the rounds, why the race stopped, and the model calls against every set at
    --max-prompts; None for a run of fixed size."""
    racing = _block(manifest)
    if racing is None:
        return None
    sizes = ", ".join(str(r["n_prompts"]) for r in racing["rounds"])
    result = racing.get("result")
    if not isinstance(result, dict):
        return (f"Sets were given prompts in rounds (--until-decided): rounds so far at {sizes} prompts; "
                "the race has not finished (rerun the same `si rank` command to continue it).")
    calls = result["model_calls"]
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    top = (config.get("racing") or {}).get("max_prompts", "--max-prompts")
    fixed = int(calls["fixed_sampled_sequences"]) + int(calls["fixed_scored_pairs"])
    return (
        f"Sets were given prompts in rounds (--until-decided) and a set stopped receiving them once it "
        f"was decided: rounds at {sizes} prompts; the race stopped because {result['stopped']}. Model calls: "
        f"{int(calls['sampled_sequences']):,} sampled sequences and {int(calls['scored_pairs']):,} scored "
        f"(response, condition) pairs, {float(calls['ratio']):.0%} of the {fixed:,} that sampling every set "
        f"at --max-prompts {top} takes ({1 - float(calls['ratio']):.0%} saved). Sets hold "
        "different numbers of prompts, always the first ones of one order: SI is each set's mean over its own "
        "prompts, ΔSI to the leader is paired on the prompts the two share, and the rank intervals and the "
        "reliability use the prompts every set has."
    )


def racing_table(manifest: dict[str, Any], order: list[str]) -> Table | None:
    """Per set (in `order`): prompts it got, rounds that sampled it, and why its rank is decided."""
    racing = _block(manifest)
    if racing is None:
        return None
    done = [r for r in racing["rounds"] if r.get("status") == "done"]
    decided = done[-1].get("decided", {}) if done else {}
    prompts: dict[str, int] = {}
    sampled: dict[str, list[str]] = {name: [] for name in order}
    for record in racing["rounds"]:
        for name in record["sets"]:
            prompts[name] = max(prompts.get(name, 0), int(record["n_prompts"]))
            sampled.setdefault(name, []).append(str(record["round"]))
    rows = tuple(
        (name, str(prompts.get(name, 0)), ", ".join(sampled.get(name, [])) or "none",
         DECISIONS.get(str(decided[name]), str(decided[name])) if decided.get(name) else "undecided")
        for name in order
    )
    return Table(
        caption=racing_summary(manifest) or "",
        columns=("set", "prompts", "sampled in rounds", "decision"),
        rows=rows,
        numeric=(False, True, False, False),
    )
