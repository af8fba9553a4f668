"""The Backend protocol shared by the transformers (`hf`) and vLLM (`vllm`) backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from si_toolkit.errors import SIError

__all__ = ["SamplingConfig", "Generation", "ScoreRequest", "Backend", "BACKENDS", "request_seed",
           "prompt_seeds"]

BACKENDS = ("auto", "hf", "vllm")
_SEED_MASK = 0x7FFFFFFF  # vLLM and torch both take a non-negative 32-bit seed


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled. The defaults are the ones SI-SPEC §1 needs for an MI estimate."""

    max_new_tokens: int = field(default=192, metadata={"help": "Maximum generated tokens per response."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 1.0 for an MI estimate."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus truncation; 1.0 (off) for an MI estimate."})
    top_k: int = field(default=0, metadata={"help": "Top-k truncation; 0 (off) for an MI estimate."})
    replicates: int = field(default=1, metadata={"help": "R: responses per (prompt, variant)."})
    seed: int = field(default=0, metadata={"help": "Base seed; each work unit derives its own from it."})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SIError(f"max_new_tokens = {self.max_new_tokens}: must be >= 1")
        if not 0.0 < self.temperature <= 10.0:
            raise SIError(f"temperature = {self.temperature}: must be in (0, 10]")
        if not 0.0 < self.top_p <= 1.0:
            raise SIError(f"top_p = {self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            raise SIError(f"top_k = {self.top_k}: must be >= 0 (0 disables it)")
        if self.replicates < 1:
            raise SIError(f"replicates = {self.replicates}: must be >= 1")

    @property
    def is_exact(self) -> bool:
        """True when sampling is untruncated at T=1, so the summed critic gives the exact posterior."""
        return self.temperature == 1.0 and self.top_p == 1.0 and self.top_k == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Generation:
    """One sampled continuation: its token ids (the EOS token included when it was generated)."""

    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    # Per-token log-probs of the sampled ids under the sampling distribution's model (T applied
    # only when the backend reports it so); None when the backend did not compute them.
    logprobs: np.ndarray | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """Teacher-force `continuation_ids` after `prefix_ids`; many requests share a prefix."""

    prefix_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]


def request_seed(seed: int, prompt_index: int) -> int:
    """The seed of prompt `prompt_index` in a `generate` call seeded with `seed`.

    Derived by hashing, so neighbouring prompts (whose replicates get seed + r) do not share
    streams the way `seed + prompt_index` would.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(prompt_index)]).generate_state(1)
    return int(state[0]) & _SEED_MASK


def prompt_seeds(seed: int | Sequence[int], n_prompts: int) -> list[int]:
    """One seed per prompt: derived from a call seed, or given per prompt.

    Per-prompt seeds let a caller put prompts of several work units into one batch and still
    draw, for each prompt, exactly what a call with that unit alone would draw.
    """
    if isinstance(seed, int):
        return [request_seed(seed, p) for p in range(n_prompts)]
    seeds = [int(s) & _SEED_MASK for s in seed]
    if len(seeds) != n_prompts:
        raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")
    return seeds


@runtime_checkable
class Backend(Protocol):
    """What the sampling and scoring stages need from a model."""

    name: str
    model_name: str
    dtype: str
    max_context: int
    tokenizer: Any  # the model's tokenizer: chat.py renders prompts with it

    def generate(
        self, prompt_ids: list[list[int]], config: SamplingConfig, seed: int | Sequence[int]
    ) -> list[list[Generation]]:
        """For each prompt, `config.replicates` sampled continuations. `seed` is one call seed or
        one seed per prompt (see `prompt_seeds`); replicate r of a prompt with seed s draws from
        stream s + r, so what a prompt gets does not depend on the other prompts in the call."""
        ...

    def greedy(self, prompt_ids: list[list[int]], max_new_tokens: int, *,
               batch_size: int | None = None) -> list[Generation]:
        """One greedy (argmax) continuation per prompt, cut after its first EOS (kept): for
        evaluation, where the answer should not depend on a draw."""
        ...

    def score(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        """For each request, float64 log π(y_t | prefix, y_<t) for every continuation token (nats)."""
        ...

    def close(self) -> None:
        """Release the model (GPU memory, engine processes)."""
        ...
