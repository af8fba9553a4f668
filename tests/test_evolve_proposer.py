"""Cleaning a model's rewrite (si_toolkit.evolve.proposer)."""

from __future__ import annotations

import pytest

from si_toolkit.evolve.proposer import MAX_REWRITE_CLAUSES, clean_reply

ORIGINAL = ("Be useful.",)


@pytest.mark.parametrize(("reply", "clauses"), [
    ("Give a direct answer to the exact question asked.", ("Give a direct answer to the exact question asked.",)),
    ("Sure! Here is the rewrite: Answer the question first. Then add details.",
     ("Answer the question first.", "Then add details.")),
    ("<answer>Principle: State the answer in one line.</answer>", ("State the answer in one line.",)),
    ("Answer the exact question asked.\n\nI hope this helps you a lot.", ("Answer the exact question asked.",)),
    ("One two three. Four five six. Seven eight nine. Ten eleven twelve.",
     ("One two three.", "Four five six.", "Seven eight nine.")),
], ids=["plain", "lead-in", "tags", "first-paragraph", "at-most-three"])
def test_clean_reply_keeps_the_rewrite(reply, clauses) -> None:
    assert clean_reply(reply, ORIGINAL) == clauses
    assert len(clauses) <= MAX_REWRITE_CLAUSES


@pytest.mark.parametrize("reply", ["", "   ", "Ok.", "Be useful.", "<think></think>", "x" * 600 + "."],
                         ids=["empty", "blank", "fragment", "unchanged", "tags-only", "too-long"])
def test_clean_reply_refuses_unusable_replies(reply) -> None:
    assert clean_reply(reply, ORIGINAL) is None
