"""A real Backend whose log-probs are an exact function of the system-prompt (variant) text.

Responses are `length` tokens drawn i.i.d. from a distribution over `vocab` (token ids of the
tiny tokenizer) that a *channel* computes from the variant text the prompt was rendered with,
and `score` returns the exact log-probs of the given tokens under that distribution. So the
SI of a candidate is a known function of its texts: the test knows the optimum, and the
estimator's CoT span (the whole response: no `</think>` is ever drawn) is exact.

Channels:
- `anchored_channel`: each variant is recognised by an anchor clause; it emits its own marker
  tokens with weight growing with how many of *its* hidden good clauses the text holds.
- `hashed_channel` (a null for selection): every distinct text emits one marker token chosen by
  a hash of the text, with the same weight, so every candidate has the same true SI.

A request whose system text asks for a rewrite (the proposer's) gets a fixed, deterministic
reply: the principle with `REWRITE_SUFFIX` appended.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from si_toolkit.backends import Generation, SamplingConfig, ScoreRequest
from si_toolkit.backends.base import prompt_seeds
from si_toolkit.chat import COT_INSTRUCTION
from si_toolkit.evolve.proposer import REWRITE_SYSTEM

Channel = Callable[[str], np.ndarray]  # variant text -> log-probs over the vocab (shape (V,))
REWRITE_SUFFIX = " Give one concrete example."
_SYSTEM = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.DOTALL)


def anchored_channel(anchors: Sequence[str], good: Sequence[Sequence[str]], *, n_vocab: int, beta: float,
                     markers_per_variant: int = 2, drift: Mapping[str, int] | None = None) -> Channel:
    """Variant v (text holding anchors[v]) puts logit beta * (number of good[v] clauses held) on its
    own marker tokens; `drift` maps a clause to a variant whose markers the clause also boosts
    (a text that gains SI by reading like another variant). Texts without an anchor are uniform."""

    def channel(text: str) -> np.ndarray:
        logits = np.zeros(n_vocab)
        for v, anchor in enumerate(anchors):
            if anchor in text:
                strength = sum(g in text for g in good[v])
                start = v * markers_per_variant
                logits[start:start + markers_per_variant] += beta * strength
        for clause, v in (drift or {}).items():
            if clause in text:
                start = v * markers_per_variant
                logits[start:start + markers_per_variant] += 3 * beta
        return logits - np.logaddexp.reduce(logits)

    return channel


def hashed_channel(*, n_vocab: int, beta: float) -> Channel:
    def channel(text: str) -> np.ndarray:
        logits = np.zeros(n_vocab)
        logits[int(hashlib.sha256(text.encode()).hexdigest(), 16) % n_vocab] = beta
        return logits - np.logaddexp.reduce(logits)

    return channel


class ChannelModel:
    """What the text-driven test backends share: a vocabulary of `vocab` non-special token ids, a
    channel (variant text -> log-probs over it, memoised per text), i.i.d. sampling of `length`
    tokens per response from a per-replicate seed, and exact scoring of given tokens."""

    def __init__(self, tokenizer, channel: Channel, *, length: int, vocab: int) -> None:
        self.tokenizer = tokenizer
        self.channel = channel
        self.length = length
        special = set(tokenizer.all_special_ids)
        self.vocab = np.array([t for t in range(len(tokenizer)) if t not in special][:vocab])
        self._index = {int(t): i for i, t in enumerate(self.vocab)}
        self._memo: dict[str, np.ndarray] = {}

    def _system(self, ids: Sequence[int]) -> str:
        match = _SYSTEM.search(self.tokenizer.decode(list(ids)))
        if match is None:
            raise ValueError("not a rendered chat prompt")
        return match.group(1)

    def _logp(self, ids: Sequence[int]) -> np.ndarray:
        text = self._system(ids).split("\n\n" + COT_INSTRUCTION)[0]
        if text not in self._memo:
            self._memo[text] = self.channel(text)
        return self._memo[text]

    def _draw(self, ids: Sequence[int], seed: int, replicates: int) -> list[Generation]:
        """`replicates` responses of the prompt's channel; replicate r draws from seed + r."""
        p = np.exp(self._logp(ids))
        out = []
        for r in range(replicates):
            draw = np.random.default_rng(seed + r).choice(len(self.vocab), size=self.length, p=p / p.sum())
            out.append(Generation([int(t) for t in self.vocab[draw]], "length"))
        return out

    def _score_all(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        return [np.array([self._logp(req.prefix_ids)[self._index[int(t)]] for t in req.continuation_ids],
                         dtype=np.float64) for req in requests]


class TextChannelBackend(ChannelModel):
    """Implements the Backend protocol (generate, score, close) with exact log-probs."""

    name = "text-channel"
    dtype = "float64"
    max_context = 4096

    def __init__(self, tokenizer, channel: Channel, *, length: int = 10, model_name: str = "text-channel",
                 delay: float = 0.0) -> None:
        super().__init__(tokenizer, channel, length=length, vocab=64)
        self.model_name = model_name
        self.delay = delay  # seconds per call, to make time budgets testable
        self.calls = {"generate": 0, "score": 0}

    def generate(self, prompt_ids: list[list[int]], config: SamplingConfig, seed) -> list[list[Generation]]:
        time.sleep(self.delay)
        self.calls["generate"] += len(prompt_ids)
        out = []
        for ids, s in zip(prompt_ids, prompt_seeds(seed, len(prompt_ids))):
            if self._system(ids).startswith(REWRITE_SYSTEM):
                principle = self.tokenizer.decode(list(ids)).split("Principle: ", 1)[1].split("<|im_end|>")[0]
                reply = self.tokenizer(principle + REWRITE_SUFFIX, add_special_tokens=False)["input_ids"]
                out.append([Generation(list(reply), "stop")] * config.replicates)
                continue
            out.append(self._draw(ids, s, config.replicates))
        return out

    def score(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        time.sleep(self.delay)
        self.calls["score"] += len(requests)
        return self._score_all(requests)

    def close(self) -> None:
        pass
