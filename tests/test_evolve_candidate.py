"""A principle set in clause form (si_toolkit.evolve.candidate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from si_toolkit.evolve.candidate import SlotRef, evolved_name, from_principle_set
from si_toolkit.principles import load_principle_set
from si_toolkit.safeio import read_yaml_mapping

SHIPPED = sorted(Path("principles").glob("*.yaml"))


def _candidate(path: Path):
    s = load_principle_set(path)
    return s, from_principle_set(s, str(read_yaml_mapping(path, "principle set").get("preamble") or ""))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_seed_candidate_rebuilds_the_shipped_set_exactly(path) -> None:
    s, c = _candidate(path)
    assert c.variant_texts() == tuple(v.text for v in s.variants)
    rebuilt = c.to_principle_set("x")
    assert [v.label for v in rebuilt.variants] == [v.label for v in s.variants]


def test_unchanged_slot_keeps_its_exact_wording(write_set) -> None:
    path = write_set("ws", "mode: alternatives\nprinciples:\n  - id: a\n    text: \"Be  kind.   Be brief.\"\n"
                           "  - id: b\n    text: Be rude.\n")
    s, c = _candidate(path)
    assert c.texts[0] == ("Be kind.", "Be brief.")
    assert c.variant_texts()[0] == "Be  kind.   Be brief."  # the user's spacing, not a re-join
    edited = c.with_slot(SlotRef(0, "text"), ("Be brief.", "Be kind."))
    assert edited.variant_texts()[0] == "Be brief. Be kind."


def test_antithesis_slots_and_flips(write_set) -> None:
    path = write_set("anti", "mode: antithesis\npreamble: Rules.\nprinciples:\n"
                             "  - id: a\n    text: Be brief.\n    antithesis: Ramble.\n"
                             "  - id: b\n    text: Be kind.\n    antithesis: Be rude.\n")
    _, c = _candidate(path)
    assert c.slots() == [SlotRef(0, "text"), SlotRef(0, "antithesis"), SlotRef(1, "text"), SlotRef(1, "antithesis")]
    edited = c.with_slot(SlotRef(1, "antithesis"), ("Be rude.", "Insult them."))
    texts = edited.variant_texts()
    assert texts[0] == "Rules.\n\n1. Be brief.\n2. Be kind."
    assert texts[2] == "Rules.\n\n1. Be brief.\n2. Be rude. Insult them."
    assert c.slot_name(SlotRef(1, "antithesis")) == "b (antithesis)"


def test_evolved_name_fits_the_limit() -> None:
    assert evolved_name("x" * 64) == "x" * 56 + "-evolved"
    assert evolved_name("hh") == "hh-evolved"
