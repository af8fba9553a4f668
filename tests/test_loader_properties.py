"""Property-based tests of the loaders: any input either loads to a valid object or raises
SIError — never another exception — and valid sets round-trip their texts."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from si_toolkit.errors import SIError
from si_toolkit.principles import load_principle_set
from si_toolkit.prompts import load_prompts

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40)


def _write(suffix: str, data: bytes) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    handle.write(data)
    handle.close()
    return Path(handle.name)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_principle_loader(data: bytes) -> None:
    path = _write(".yaml", data)
    try:
        load_principle_set(path)
    except SIError:
        pass


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"id": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
                                       "text": text}), min_size=0, max_size=5),
       st.sampled_from(["alternatives", "antithesis", "other"]))
def test_structured_sets_load_or_refuse(principles: list[dict[str, str]], mode: str) -> None:
    for p in principles:
        p["antithesis"] = "not " + p["text"]
    if mode == "alternatives":
        for p in principles:
            del p["antithesis"]
    path = _write(".yaml", yaml.safe_dump({"mode": mode, "principles": principles}).encode())
    try:
        s = load_principle_set(path)
    except SIError:
        return
    assert s.K >= 2
    texts = [p["text"].strip() for p in principles]
    if mode == "alternatives":
        assert [v.text for v in s.variants] == texts
    else:
        assert s.K == len(principles) + 1 and all(t in s.variants[0].text for t in texts)


@SETTINGS
@given(st.lists(st.one_of(st.fixed_dictionaries({"prompt": text}),
                          st.fixed_dictionaries({"id": text, "prompt": text, "answer": text}),
                          st.just({"no_prompt": 1})), min_size=0, max_size=6))
def test_jsonl_prompts_load_or_refuse(records: list[dict[str, object]]) -> None:
    path = _write(".jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    try:
        prompts = load_prompts(str(path))
    except SIError:
        return
    ids = [p.id for p in prompts.prompts]
    assert len(ids) == len(set(ids)) and all(p.text.strip() for p in prompts.prompts)
