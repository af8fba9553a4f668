"""The evaluation cache: every sample, score and model proposal an evolve run has computed.

Samples are keyed by (variant text hash, prompt id, replicate) under the run's seed, so a variant
shared by several candidates, or met again in a later generation, is sampled once. A score
depends on the response and on the condition it is scored under, so it is keyed by the
response's key and the condition text's hash: a response is scored under a given text once,
whichever candidates contain the two.

On disk the cache is a folder of shards, each written atomically (temporary file, fsync,
rename) and never changed: `samples-NNNNN.parquet`, `scores-NNNNN.parquet` and
`proposals-NNNNN.json`. A killed run loses at most the batch it was computing; reopening the
folder reads every shard back.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from si_toolkit.errors import SIError
from si_toolkit.safeio import atomic_write_bytes, atomic_write_text

__all__ = ["text_key", "SampleKey", "Sample", "ScoreKey", "SpanScores", "EvalCache"]

SAMPLE_COLUMNS = ["variant", "prompt_id", "replicate", "token_ids", "text", "cot_end", "n_tokens", "format_ok",
                  "finish_reason"]
SCORE_COLUMNS = ["variant", "prompt_id", "replicate", "condition", "logp_cot", "n_cot", "logp_full", "n_full"]
_SHARD = re.compile(r"^(samples|scores|proposals)-(\d{5,})\.(parquet|json)$")


def text_key(text: str) -> str:
    """The hash that stands for a variant or condition text in cache keys."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


SampleKey = tuple[str, str, int]  # (variant text hash, prompt id, replicate)
ScoreKey = tuple[str, str, int, str]  # sample key + condition text hash


@dataclass(frozen=True)
class Sample:
    token_ids: tuple[int, ...]
    text: str
    cot_end: int
    n_tokens: int
    format_ok: bool
    finish_reason: str


@dataclass(frozen=True)
class SpanScores:
    """Summed log-probs (nats) and token counts of one response under one condition."""

    logp_cot: float
    n_cot: int
    logp_full: float
    n_full: int


class EvalCache:
    """In-memory maps backed by append-only shards in `folder`. Constructing reads nothing."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.samples: dict[SampleKey, Sample] = {}
        self.scores: dict[ScoreKey, SpanScores] = {}
        self.proposals: dict[str, str] = {}
        self._next = 1

    def load(self) -> EvalCache:
        """Read every shard; later shards never repeat a key, but if one did the first wins."""
        if not self.folder.is_dir():
            return self
        for path in sorted(self.folder.iterdir()):
            match = _SHARD.match(path.name)
            if not match:
                continue  # a temporary file left by a kill
            self._next = max(self._next, int(match[2]) + 1)
            try:
                self._read(match[1], path)
            except (ValueError, KeyError, OSError) as err:
                raise SIError(f"{path}: unreadable cache shard ({str(err).splitlines()[0]}); delete it and "
                              "rerun to recompute it") from None
        return self

    def _read(self, kind: str, path: Path) -> None:
        if kind == "proposals":
            for key, reply in json.loads(path.read_text(encoding="utf-8")).items():
                self.proposals.setdefault(key, str(reply))
            return
        frame = pd.read_parquet(path)
        if kind == "samples":
            for row in frame.itertuples(index=False):
                key = (row.variant, row.prompt_id, int(row.replicate))
                self.samples.setdefault(key, Sample(tuple(int(t) for t in row.token_ids), row.text, int(row.cot_end),
                                                    int(row.n_tokens), bool(row.format_ok), row.finish_reason))
        else:
            for row in frame.itertuples(index=False):
                key = (row.variant, row.prompt_id, int(row.replicate), row.condition)
                self.scores.setdefault(key, SpanScores(float(row.logp_cot), int(row.n_cot), float(row.logp_full),
                                                       int(row.n_full)))

    def _path(self, kind: str, suffix: str) -> Path:
        path = self.folder / f"{kind}-{self._next:05d}.{suffix}"
        self._next += 1
        return path

    def add_samples(self, items: dict[SampleKey, Sample]) -> None:
        new = {k: v for k, v in items.items() if k not in self.samples}
        if not new:
            return
        rows = [{"variant": k[0], "prompt_id": k[1], "replicate": k[2], "token_ids": list(s.token_ids),
                 "text": s.text, "cot_end": s.cot_end, "n_tokens": s.n_tokens, "format_ok": s.format_ok,
                 "finish_reason": s.finish_reason} for k, s in new.items()]
        self._write_frame("samples", pd.DataFrame(rows, columns=SAMPLE_COLUMNS))
        self.samples.update(new)

    def add_scores(self, items: dict[ScoreKey, SpanScores]) -> None:
        new = {k: v for k, v in items.items() if k not in self.scores}
        if not new:
            return
        rows = [{"variant": k[0], "prompt_id": k[1], "replicate": k[2], "condition": k[3], "logp_cot": s.logp_cot,
                 "n_cot": s.n_cot, "logp_full": s.logp_full, "n_full": s.n_full} for k, s in new.items()]
        self._write_frame("scores", pd.DataFrame(rows, columns=SCORE_COLUMNS))
        self.scores.update(new)

    def add_proposal(self, key: str, reply: str) -> None:
        if key in self.proposals:
            return
        atomic_write_text(self._path("proposals", "json"), json.dumps({key: reply}) + "\n")
        self.proposals[key] = reply

    def _write_frame(self, kind: str, frame: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write_bytes(self._path(kind, "parquet"), buffer.getvalue())

    def stats(self) -> dict[str, Any]:
        return {"samples": len(self.samples), "scores": len(self.scores), "proposals": len(self.proposals)}
