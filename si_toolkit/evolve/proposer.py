"""The model proposer: asks a model to rewrite one principle text more concretely.

`--proposer embedded` (or any model the backends load) turns on the `rewrite` operator: the
model gets the slot's text and the request below, and its reply, cleaned, replaces the slot.
A rewrite's clauses are model-written, so the lineage and report mark every candidate that
holds one. Replies are sampled at temperature 0.7 (a proposal is not an MI estimate, so it may
be truncated) with a seed drawn by the operator, and cached, so a rerun replays them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from si_toolkit.backends import Backend, SamplingConfig
from si_toolkit.chat import render_request_ids
from si_toolkit.evolve.cache import EvalCache, text_key
from si_toolkit.evolve.candidate import Candidate, SlotRef
from si_toolkit.evolve.measure import Budget
from si_toolkit.evolve.operators import Edit
from si_toolkit.evolve.pool import MAX_CLAUSE_CHARS, join_clauses, split_clauses

__all__ = ["REWRITE_SYSTEM", "REWRITE_REQUEST", "Proposer", "clean_reply"]

REWRITE_SYSTEM = "You edit the written principles that guide an AI assistant."
REWRITE_REQUEST = (
    "Rewrite the principle below to be more specific and concrete, without changing what it asks for. "
    "Reply with the rewritten principle only, in one to three sentences.\n\nPrinciple: {text}"
)
MAX_REWRITE_CLAUSES = 3
MIN_CLAUSE_WORDS = 3  # shorter pieces of a reply are fragments ("Sure.", "Principle:")
PROPOSAL_TOKENS = 96  # one to three sentences
PROPOSAL_TEMPERATURE = 0.7
_TAGS = re.compile(r"</?(?:think|answer)>")
_LEAD = re.compile(r"^\s*(?:sure[,.!]?\s*|here is[^:]*:\s*|rewritten principle:\s*|principle:\s*)+", re.IGNORECASE)


def clean_reply(reply: str, original: tuple[str, ...]) -> tuple[str, ...] | None:
    """The clauses of a usable rewrite, or None: tags and lead-ins removed, first paragraph only,
    fragments and over-long sentences dropped, at most MAX_REWRITE_CLAUSES, different from the original."""
    text = _TAGS.sub(" ", reply).strip().strip('"“”').strip()
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    text = _LEAD.sub("", text)
    clauses = [c.strip('"“” ') for c in split_clauses(text)]
    good = [c for c in clauses if len(c.split()) >= MIN_CLAUSE_WORDS and len(c) <= MAX_CLAUSE_CHARS]
    good = list(dict.fromkeys(good))[:MAX_REWRITE_CLAUSES]
    if not good or tuple(good) == tuple(original):
        return None
    return tuple(good)


class Proposer:
    """A `Rewriter` (operators.py) backed by a model; `backend()` is called only on a cache miss."""

    def __init__(self, backend: Callable[[], Backend], model_name: str, cache: EvalCache, budget: Budget) -> None:
        self._backend = backend
        self.model_name = model_name
        self.cache = cache
        self.budget = budget

    def _reply(self, text: str, seed: int) -> str:
        key = f"{self.model_name}|{text_key(text)}|{seed}"
        if key not in self.cache.proposals:
            self.budget.check()
            backend = self._backend()
            ids = render_request_ids(backend.tokenizer, REWRITE_SYSTEM, REWRITE_REQUEST.format(text=text))
            config = SamplingConfig(max_new_tokens=PROPOSAL_TOKENS, temperature=PROPOSAL_TEMPERATURE, seed=seed)
            generation = backend.generate([ids], config, [seed])[0][0]
            self.cache.add_proposal(key, backend.tokenizer.decode(generation.token_ids, skip_special_tokens=True))
        return self.cache.proposals[key]

    def __call__(self, c: Candidate, slot: SlotRef, seed: int) -> Edit | None:
        original = c.get(slot)
        clauses = clean_reply(self._reply(join_clauses(original), seed), original)
        if clauses is None:
            return None
        return Edit(c.with_slot(slot, clauses), "rewrite",
                    f"{c.slot_name(slot)}: rewritten by {self.model_name} as “{join_clauses(clauses)}”",
                    model_written=True)
