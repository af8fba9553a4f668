"""The evaluation cache (si_toolkit.evolve.cache): keys, shards, reload after a kill."""

from __future__ import annotations

import pytest

from si_toolkit.errors import SIError
from si_toolkit.evolve.cache import EvalCache, Sample, SpanScores, text_key


def test_shards_round_trip_and_never_repeat_keys(tmp_path) -> None:
    cache = EvalCache(tmp_path / "cache").load()
    v, c = text_key("Variant text."), text_key("Condition text.")
    sample = Sample((5, 6, 7), "abc", 2, 3, False, "length")
    cache.add_samples({(v, "p1", 0): sample})
    cache.add_samples({(v, "p1", 0): Sample((9,), "x", 1, 1, True, "stop")})  # a known key is not rewritten
    cache.add_scores({(v, "p1", 0, c): SpanScores(-1.5, 2, -2.0, 3)})
    cache.add_proposal("m|h|1", "A rewrite.")
    (tmp_path / "cache" / ".samples-00009.parquet.tmp").write_bytes(b"half")  # what a kill can leave
    again = EvalCache(tmp_path / "cache").load()
    assert again.samples == {(v, "p1", 0): sample}
    assert again.scores == {(v, "p1", 0, c): SpanScores(-1.5, 2, -2.0, 3)}
    assert again.proposals == {"m|h|1": "A rewrite."}
    assert len(list((tmp_path / "cache").glob("samples-*.parquet"))) == 1
    again.add_samples({(v, "p2", 0): sample})
    assert (tmp_path / "cache" / "samples-00004.parquet").is_file()  # numbering goes on after the last shard


def test_text_key_depends_on_every_character() -> None:
    assert text_key("Be kind.") != text_key("Be kind. ")
    assert text_key("Be kind.") == text_key("Be kind.")


def test_a_corrupt_shard_is_named(tmp_path) -> None:
    (tmp_path / "samples-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(SIError, match="samples-00001.parquet: unreadable cache shard"):
        EvalCache(tmp_path).load()
