"""A real Backend whose log-probs are an exact function of the variant text, so every set's SI
is known in closed form.

A variant text listed in `channels` makes the model emit `length` tokens i.i.d. from a
distribution over the first `vocab` non-special token ids of the tokenizer, with logit `beta`
on its own marker token and 0 elsewhere; any other text gives the uniform distribution.
`score` returns the exact log-probs of the given tokens under the distribution of the prompt's
variant, so the pipeline's estimates are exact up to sampling noise, and `true_si` gives the
SI a set of two such variants has (SI-SPEC §3-4: I(C; Y) / log K, computed over the counts of
the two marker tokens, which are sufficient statistics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
from scipy import special

from si_toolkit.backends.base import Generation, SamplingConfig, ScoreRequest, prompt_seeds
from text_channel import Channel, ChannelModel


def known_channel(channels: Mapping[str, tuple[int, float]], vocab: int) -> Channel:
    """Variant text -> log-probs: logit beta on the text's marker for a text in `channels`, else uniform."""

    def channel(text: str) -> np.ndarray:
        logits = np.zeros(vocab)
        if text in channels:
            marker, beta = channels[text]
            logits[marker] = beta
        return logits - special.logsumexp(logits)

    return channel


class KnownSIBackend(ChannelModel):
    """Implements the Backend protocol (generate, score, close) with exact, text-driven log-probs.

    channels: variant text -> (marker index in 0..vocab-1, beta). `calls` counts the sequences
    sampled and the (response, condition) pairs scored; `fail_after` raises after that many
    backend calls (a crash in the middle of a run).
    """

    name = "known-si"
    dtype = "float64"
    max_context = 4096
    model_name = "known-si"

    def __init__(self, tokenizer, channels: Mapping[str, tuple[int, float]], *, length: int = 10, vocab: int = 16,
                 delay: float = 0.0, fail_after: int | None = None) -> None:
        self.channels = dict(channels)
        super().__init__(tokenizer, known_channel(self.channels, vocab), length=length, vocab=vocab)
        self.delay = delay
        self.fail_after = fail_after
        self.calls = {"sequences": 0, "pairs": 0, "backend_calls": 0}

    def _tick(self) -> None:
        self.calls["backend_calls"] += 1
        if self.fail_after is not None and self.calls["backend_calls"] > self.fail_after:
            raise RuntimeError("simulated crash")
        time.sleep(self.delay)

    def generate(self, prompt_ids: list[list[int]], config: SamplingConfig, seed) -> list[list[Generation]]:
        self._tick()
        out = [self._draw(ids, s, config.replicates) for ids, s in zip(prompt_ids, prompt_seeds(seed, len(prompt_ids)))]
        self.calls["sequences"] += len(prompt_ids) * config.replicates
        return out

    def score(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        self._tick()
        self.calls["pairs"] += len(requests)
        return self._score_all(requests)

    def close(self) -> None:
        pass


def true_si(beta: float, *, length: int = 10, vocab: int = 16) -> float:
    """SI of a K = 2 set whose variants put logit `beta` on two different marker tokens.

    With a, b the counts of the two markers among the `length` tokens, p(y | c_0) / p(y | c_1)
    = exp(beta (a − b)), so p(c_0 | y) = σ(beta (a − b)); I(C; Y) = log 2 + E[log p(c | y)]
    with (a, b, rest) multinomial under c_0 (the other variant is its mirror image).
    """
    z = math.exp(beta) + vocab - 1
    probs = (math.exp(beta) / z, 1 / z, (vocab - 2) / z)  # own marker, other marker, the rest
    expected = 0.0
    for a in range(length + 1):
        for b in range(length + 1 - a):
            rest = length - a - b
            log_pmf = (math.lgamma(length + 1) - math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(rest + 1)
                       + a * math.log(probs[0]) + b * math.log(probs[1]) + rest * math.log(probs[2]))
            expected += math.exp(log_pmf) * -math.log1p(math.exp(-beta * (a - b)))
    return (math.log(2) + expected) / math.log(2)
