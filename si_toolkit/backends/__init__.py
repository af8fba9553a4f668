"""Backends: the two operations every stage needs from a language model.

`generate` samples continuations of rendered prompt token ids; `score` returns the per-token
log-probabilities of given continuation ids after given prefix ids (teacher forcing). Stages
only talk to a backend through `si_toolkit.backends.base.Backend`.
"""

from si_toolkit.backends.base import Backend, Generation, SamplingConfig, ScoreRequest
from si_toolkit.backends.factory import make_backend

__all__ = ["Backend", "Generation", "SamplingConfig", "ScoreRequest", "make_backend"]
