"""Tests of si_toolkit.train.rewards: a table of completions, the number extractor, the config."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from si_toolkit.errors import SIError
from si_toolkit.train.rewards import (
    REWARDS,
    RewardConfig,
    compute_rewards,
    correctness_reward,
    extract_number,
    graded_format_reward,
    length_reward,
    reward_terms,
    strict_format_reward,
)

# Completions as generated after the "<think>\n" prefill: (id, text, graded, strict).
FORMAT_TABLE = [
    ("exact", "Add 2 and 3.\n</think><answer>5</answer>", 1.0, 1.0),
    ("exact-newlines", "Add 2 and 3.</think>\n<answer>\n5\n</answer>\n", 1.0, 1.0),
    ("no-close", "Add 2 and 3, which gives 5.", 0.0, 0.0),
    ("empty-cot", "</think><answer>5</answer>", 0.0, 0.0),
    ("blank-cot", "  \n </think><answer>5</answer>", 0.0, 0.0),
    ("skips-think-close", "Add 2 and 3.<answer>5</answer>", 0.0, 0.0),  # the pilot's usual miss
    ("cot-only", "Add 2 and 3.</think>", 0.25, 0.0),
    ("answer-untagged", "Add 2 and 3.</think> The answer is 5.", 0.25, 0.0),
    ("answer-unclosed", "Add 2 and 3.</think><answer>5", 0.5, 0.0),
    ("answer-empty", "Add 2 and 3.</think><answer>  </answer>", 0.5, 0.0),
    ("text-after", "Add 2 and 3.</think><answer>5</answer> Hope this helps!", 0.75, 0.0),
    ("text-between", "Add 2 and 3.</think> So: <answer>5</answer>", 0.75, 0.0),
]


@pytest.mark.parametrize(("text", "graded", "strict"), [row[1:] for row in FORMAT_TABLE], ids=[row[0] for row in FORMAT_TABLE])
def test_format_rewards_table(text: str, graded: float, strict: float) -> None:
    assert graded_format_reward(text) == graded
    assert strict_format_reward(text) == strict


@pytest.mark.parametrize(
    ("text", "graded"),
    [
        ("<think>Add 2 and 3.</think><answer>5</answer>", 1.0),
        ("  <think>Add 2 and 3.</think><answer>5", 0.5),
        ("Add 2 and 3.</think><answer>5</answer>", 0.0),  # no opener and no prefill
    ],
    ids=["exact", "unclosed-answer", "no-opener"],
)
def test_format_rewards_without_prefill(text: str, graded: float) -> None:
    assert graded_format_reward(text, prefill=False) == graded
    assert strict_format_reward(text, prefill=False) == (1.0 if graded == 1.0 else 0.0)


FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "x", "5", " ", "\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=10))
def test_graded_is_a_ladder_that_tops_out_only_at_the_exact_format(parts: list[str]) -> None:
    text = "".join(parts)
    graded = graded_format_reward(text)
    assert graded in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert (graded == 1.0) == (strict_format_reward(text) == 1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42.0),
        ("The answer is 42.", 42.0),
        ("1,234 apples", 1234.0),
        ("-5", -5.0),
        ("x = \u22123", -3.0),  # unicode minus
        ("3.5 hours", 3.5),
        ("about .5", 0.5),
        ("3/4 of it", 0.75),
        ("50%", 50.0),
        ("pages 3-5", 5.0),  # a range, not minus five
        ("from 2 to 7", 7.0),  # the last number
        ("so #### 72", 72.0),  # GSM8K reference style
    ],
)
def test_extract_number(text: str, expected: float) -> None:
    assert extract_number(text) == expected


def test_extract_number_without_a_number() -> None:
    assert extract_number("no digits here") is None
    value = extract_number("1/0")
    assert value is not None and math.isnan(value)


@pytest.mark.parametrize(
    ("text", "reference", "expected"),
    [
        ("Sum it.</think><answer>The total is 1,234.</answer>", "1234", 1.0),
        ("Sum it.</think><answer>1234</answer>", "#### 1235", 0.0),
        ("Sum it.</think><answer>0.30000000000000004</answer>", "0.3", 1.0),  # within rel_tol
        ("Sum it.</think><answer>1/2</answer>", "0.5", 1.0),
        ("Sum it. The total is 1234.", "1234", 0.0),  # no <answer> block
        ("Sum it.</think><answer>twelve</answer>", "12", 0.0),  # no number in the answer
        ("Sum it.</think><answer>12", "12", 1.0),  # unclosed answer still read
        ("Sum it.</think><answer>7</answer><answer>12</answer>", "12", 1.0),  # last answer block
    ],
)
def test_correctness_reward(text: str, reference: str, expected: float) -> None:
    assert correctness_reward(text, reference) == expected


def test_correctness_needs_a_numeric_reference() -> None:
    with pytest.raises(SIError, match="no number"):
        correctness_reward("x</think><answer>5</answer>", "Paris")


@pytest.mark.parametrize(
    ("n_chars", "expected"),
    # max 100, soft 20: the ramp starts at 80. 90 -> (80 − 90)/20 = −0.5; 100 -> −1.
    [(50, 0.0), (80, 0.0), (90, -0.5), (100, -1.0), (101, -1.0)],
)
def test_length_reward(n_chars: int, expected: float) -> None:
    assert length_reward("a" * n_chars, max_chars=100, soft_chars=20) == pytest.approx(expected)


TEXTS = [
    "Add 2 and 3.</think><answer>5</answer>",  # exact, correct
    "Add 2 and 3.</think><answer>6</answer> and more text after the answer",  # 0.75, wrong
    "Add 2 and 3.</think> <answer>5",  # 0.5, correct but not exact
]
ANSWERS = ["5", "5", "5"]


def test_compute_rewards_default_is_the_graded_format() -> None:
    rewards = compute_rewards(TEXTS, None, RewardConfig())
    np.testing.assert_allclose(rewards, [1.0, 0.75, 0.5])
    assert rewards.dtype == np.float64


def test_compute_rewards_combines_weighted_terms() -> None:
    # Lengths: 38, 69, 30 characters; max 60, soft 20 -> ramp from 40: text 2 = −1, others 0.
    # strict format (weight 1): [1, 0, 0]; length (weight 0.5): [0, −1, 0];
    # correctness (weight 2): [1, 0, 1].  Total = [1 + 2, −0.5, 2] = [3, −0.5, 2].
    config = RewardConfig(
        format_reward="strict", length_weight=0.5, length_max_chars=60, length_soft_chars=20, correctness_weight=2.0
    )
    assert [len(t) for t in TEXTS] == [38, 69, 30]
    np.testing.assert_allclose(compute_rewards(TEXTS, ANSWERS, config), [3.0, -0.5, 2.0])
    terms = reward_terms(TEXTS, ANSWERS, config)
    assert sorted(terms) == ["correctness", "graded_format", "length", "strict_format"]
    np.testing.assert_allclose(terms["graded_format"], [1.0, 0.75, 0.5])


def test_correctness_can_be_gated_on_the_format() -> None:
    # Text 3 is correct but not exact: gated, its correctness term drops to 0.
    config = RewardConfig(format_weight=0.0, correctness_weight=1.0, gate_correctness_on_format=True)
    np.testing.assert_allclose(compute_rewards(TEXTS, ANSWERS, config), [1.0, 0.0, 0.0])


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_registered_term_scores_the_exact_format(name: str) -> None:
    # An exact, correct, short completion is the best case of every term:
    # formats and correctness give 1, the length penalty gives 0.
    best = {"graded_format": 1.0, "strict_format": 1.0, "length": 0.0, "correctness": 1.0}
    assert REWARDS[name](TEXTS[0], "5", RewardConfig()) == best[name]


def test_compute_rewards_rejects_bad_input() -> None:
    with pytest.raises(SIError, match="reference answer"):
        compute_rewards(TEXTS, None, RewardConfig(correctness_weight=1.0))
    with pytest.raises(ValueError, match="3 texts but 2 answers"):
        compute_rewards(TEXTS, ["5", "5"], RewardConfig())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"format_reward": "soft"}, "format_reward"),
        ({"format_weight": -1.0}, "format_weight"),
        ({"correctness_weight": float("nan")}, "correctness_weight"),
        ({"length_soft_chars": 500, "length_max_chars": 100}, "length_soft_chars"),
        ({"length_soft_chars": 0}, "length_soft_chars"),
    ],
    ids=["format-name", "negative-weight", "nan-weight", "soft-over-max", "zero-soft"],
)
def test_reward_config_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(SIError, match=field):
        RewardConfig(**kwargs)  # type: ignore[arg-type]
