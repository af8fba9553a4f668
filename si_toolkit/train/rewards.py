"""Rewards of the ENIGMA trainer: format-only by default, computed from a completion's text.

The target response is `<think>COT</think><answer>ANSWER</answer>`. By default the assistant turn
is prefilled with `<think>` + newline (SI-SPEC §1), so the text these functions receive is what
the model generated *after* the prefill: `COT</think><answer>ANSWER</answer>`.

- `graded_format_reward` (default): partial credit for each element of the format, in order,
  so that a small model that rarely emits the exact format still gets a learning signal
  (on the embedded model a binary reward was 0 for every sampled completion).
- `strict_format_reward`: 1 for the exact format, else 0. "Exact" is `si_toolkit.chat`'s
  `is_exact_format`, the same test that sets `format_ok` in samples.parquet.
- Optional terms, off by default: `length_reward` (soft over-length penalty) and
  `correctness_reward` (numeric match of the answer against a reference).

`REWARDS` maps each term's name to one function; `compute_rewards` combines the terms a
`RewardConfig` enables, and `reward_terms` returns each term separately for logging.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from si_toolkit.chat import is_exact_format
from si_toolkit.errors import SIError

__all__ = [
    "REWARDS",
    "RewardConfig",
    "answer_text",
    "compute_rewards",
    "correctness_reward",
    "extract_number",
    "graded_format_reward",
    "length_reward",
    "reward_terms",
    "strict_format_reward",
]

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"

# A number: optional sign (not after a word character or digit, so "3-5" is 3 then 5), digits
# with optional thousands separators and decimals, optionally "/ denominator" (a fraction).
_NUMBER = re.compile(
    r"(?:(?<![\w.)])[-+\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?"
    r"|(?:(?<![\w.)])[-+\u2212])?\.\d+"
)


@dataclass(frozen=True)
class RewardConfig:
    """Which reward terms the trainer uses and how they are weighted.

    reward = format_weight · format + length_weight · length + correctness_weight · correctness
    """

    format_reward: Literal["graded", "strict"] = field(
        default="graded",
        metadata={"help": "Format term: 'graded' (partial credit per element, in order) or 'strict' (0/1 exact format)."},
    )
    format_weight: float = field(default=1.0, metadata={"help": "Weight of the format term (>= 0)."})
    prefill: bool = field(
        default=True,
        metadata={"help": "True when the assistant turn was prefilled with '<think>\\n' (the text starts inside the CoT)."},
    )
    length_weight: float = field(
        default=0.0, metadata={"help": "Weight of the soft over-length penalty (>= 0); 0 turns it off."}
    )
    length_max_chars: int = field(
        default=4000, metadata={"help": "Completion length (characters) at and beyond which the length term is -1."}
    )
    length_soft_chars: int = field(
        default=1000,
        metadata={"help": "Width (characters) of the linear ramp from 0 to -1 that ends at length_max_chars."},
    )
    correctness_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the numeric answer-correctness term (>= 0); 0 turns it off. Needs reference answers."},
    )
    correctness_rel_tol: float = field(
        default=1e-6, metadata={"help": "Relative tolerance of the numeric match (math.isclose rel_tol, >= 0)."}
    )
    correctness_abs_tol: float = field(
        default=1e-9, metadata={"help": "Absolute tolerance of the numeric match (math.isclose abs_tol, >= 0)."}
    )
    gate_correctness_on_format: bool = field(
        default=False, metadata={"help": "Count the correctness term only for completions in the exact format."}
    )

    def __post_init__(self) -> None:
        if self.format_reward not in ("graded", "strict"):
            raise SIError(f"format_reward={self.format_reward!r}: use 'graded' or 'strict'")
        for name in ("format_weight", "length_weight", "correctness_weight", "correctness_rel_tol", "correctness_abs_tol"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise SIError(f"{name}={value}: must be a finite number >= 0")
        if not (0 < self.length_soft_chars <= self.length_max_chars):
            raise SIError(
                f"length_soft_chars={self.length_soft_chars}, length_max_chars={self.length_max_chars}: "
                "need 0 < length_soft_chars <= length_max_chars"
            )


# --------------------------------------------------------------------------------------------
# Format terms
# --------------------------------------------------------------------------------------------


def _strip_opener(text: str, prefill: bool) -> str | None:
    """The text after the `<think>` opener: all of it with the prefill, else after a leading tag."""
    if prefill:
        return text
    stripped = text.lstrip()
    return stripped[len(THINK_OPEN):] if stripped.startswith(THINK_OPEN) else None


def strict_format_reward(text: str, *, prefill: bool = True) -> float:
    """1.0 if the completion is exactly `<think>COT</think><answer>ANSWER</answer>`, else 0.0.

    COT and ANSWER must hold a non-whitespace character; only whitespace may sit between
    `</think>` and `<answer>` and after `</answer>`. `text` is the completion after the prefill
    (`prefill=True`) or the whole completion, starting with `<think>` (`prefill=False`).
    Defined by `si_toolkit.chat.is_exact_format`.
    """
    return 1.0 if is_exact_format(text, prefill=prefill) else 0.0


def graded_format_reward(text: str, *, prefill: bool = True) -> float:
    """Partial credit, a quarter per element of the format reached in order, in [0, 1].

    With the completion read after the `<think>` opener (the prefill, or a leading `<think>`
    when prefill=False; without one the reward is 0):

        +0.25  `</think>` closes a CoT holding a non-whitespace character
        +0.25  `<answer>` opens somewhere after that `</think>`
        +0.25  `</answer>` closes it, with a non-whitespace answer in between
        +0.25  the whole completion is in the exact format (`strict_format_reward`), so
               nothing but whitespace follows `</answer>` and nothing stray sits between parts

    Each element counts only if all earlier ones do, so the reward climbs a ladder. It is
    1.0 exactly when `strict_format_reward` is 1.0 (the exact format is checked first).
    """
    if strict_format_reward(text, prefill=prefill) == 1.0:
        return 1.0
    body = _strip_opener(text, prefill)
    if body is None:
        return 0.0
    close = body.find(THINK_CLOSE)
    if close < 0 or not body[:close].strip():
        return 0.0
    after_cot = body[close + len(THINK_CLOSE):]
    opened = after_cot.find(ANSWER_OPEN)
    if opened < 0:
        return 0.25
    answer_and_rest = after_cot[opened + len(ANSWER_OPEN):]
    closed = answer_and_rest.find(ANSWER_CLOSE)
    if closed < 0 or not answer_and_rest[:closed].strip():
        return 0.5
    return 0.75


# --------------------------------------------------------------------------------------------
# Optional terms
# --------------------------------------------------------------------------------------------


def length_reward(text: str, *, max_chars: int, soft_chars: int) -> float:
    """Soft over-length penalty (DAPO's soft overlong punishment, counted in characters).

    With n = len(text) and s = max_chars − soft_chars:

        0                    if n <= s
        (s − n) / soft_chars if s < n <= max_chars      (a linear ramp from 0 down to −1)
        −1                   if n > max_chars

    Characters, not tokens, because this term sees only text (about 4 characters per
    token for English BPE tokenizers).
    """
    start = max_chars - soft_chars
    n = len(text)
    if n <= start:
        return 0.0
    if n <= max_chars:
        return (start - n) / soft_chars
    return -1.0


def answer_text(text: str) -> str | None:
    """The content of the last `<answer>` block: up to the next `</answer>`, else to the end."""
    opened = text.rfind(ANSWER_OPEN)
    if opened < 0:
        return None
    content = text[opened + len(ANSWER_OPEN):]
    closed = content.find(ANSWER_CLOSE)
    return content if closed < 0 else content[:closed]


def extract_number(text: str) -> float | None:
    """The LAST number written in `text`, as a float, or None if there is none.

    Recognised: an optional sign (`-`, `+`, or `−`, but not right after a letter, digit or
    `)`, so the range "3-5" reads as 3 then 5), integers, thousands separators ("1,234"),
    decimals ("3.5", ".5") and simple fractions ("3/4" → 0.75). A trailing unit or "%" is
    ignored ("50%" → 50). Not recognised: scientific notation, number words, LaTeX fractions.
    The last number is taken because final answers usually come last ("so the total is 42";
    GSM8K's "#### 42"). A fraction with denominator 0 reads as NaN (it matches nothing).
    """
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    token = matches[-1].replace(",", "").replace("\u2212", "-").replace(" ", "")
    if "/" in token:
        numerator, denominator = token.split("/")
        if float(denominator) == 0.0:
            return math.nan
        return float(Fraction(numerator) / Fraction(denominator))
    return float(token)


def correctness_reward(text: str, reference: str, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> float:
    """1.0 if the number in the completion's answer matches the reference's number, else 0.0.

    The predicted number is `extract_number(answer_text(text))` (no `<answer>` tag, or no
    number in it, gives 0.0); the reference number is `extract_number(reference)`. They match
    when math.isclose(pred, ref, rel_tol=rel_tol, abs_tol=abs_tol).

    Raises:
        SIError: the reference holds no (finite) number.
    """
    expected = extract_number(reference)
    if expected is None or not math.isfinite(expected):
        raise SIError(
            f"reference answer {reference!r} holds no number: the correctness term needs numeric "
            "answers; set correctness_weight=0 or use prompts with numeric reference answers"
        )
    answer = answer_text(text)
    predicted = None if answer is None else extract_number(answer)
    if predicted is None or not math.isfinite(predicted):
        return 0.0
    return 1.0 if math.isclose(predicted, expected, rel_tol=rel_tol, abs_tol=abs_tol) else 0.0


# --------------------------------------------------------------------------------------------
# Registry and combination
# --------------------------------------------------------------------------------------------

RewardFn = Callable[[str, str | None, RewardConfig], float]  # (text, reference answer, config)


def _graded_term(text: str, reference: str | None, config: RewardConfig) -> float:
    return graded_format_reward(text, prefill=config.prefill)


def _strict_term(text: str, reference: str | None, config: RewardConfig) -> float:
    return strict_format_reward(text, prefill=config.prefill)


def _length_term(text: str, reference: str | None, config: RewardConfig) -> float:
    return length_reward(text, max_chars=config.length_max_chars, soft_chars=config.length_soft_chars)


def _correctness_term(text: str, reference: str | None, config: RewardConfig) -> float:
    if reference is None:
        raise SIError("correctness_weight > 0 needs a reference answer for every prompt; one is missing")
    if config.gate_correctness_on_format and not is_exact_format(text, prefill=config.prefill):
        return 0.0
    return correctness_reward(text, reference, rel_tol=config.correctness_rel_tol, abs_tol=config.correctness_abs_tol)


REWARDS: Mapping[str, RewardFn] = MappingProxyType(
    {
        "graded_format": _graded_term,
        "strict_format": _strict_term,
        "length": _length_term,
        "correctness": _correctness_term,
    }
)


def _weights(config: RewardConfig) -> dict[str, float]:
    """Weight of each enabled term of the total reward, by registry name."""
    weights = {f"{config.format_reward}_format": config.format_weight}
    if config.length_weight > 0.0:
        weights["length"] = config.length_weight
    if config.correctness_weight > 0.0:
        weights["correctness"] = config.correctness_weight
    return weights


def reward_terms(
    texts: Sequence[str], answers: Sequence[str | None] | None, config: RewardConfig
) -> dict[str, NDArray[np.float64]]:
    """Each reward term, unweighted, as a (B,) array keyed by its `REWARDS` name.

    Both format terms are always present (the trainer logs graded and strict format rates);
    `length` and `correctness` are present when their weight is > 0.
    """
    refs = _references(texts, answers)
    names = dict.fromkeys(["graded_format", "strict_format", *_weights(config)])
    return {
        name: np.array([REWARDS[name](text, ref, config) for text, ref in zip(texts, refs)], dtype=np.float64)
        for name in names
    }


def compute_rewards(
    texts: Sequence[str], answers: Sequence[str | None] | None, config: RewardConfig
) -> NDArray[np.float64]:
    """The total reward of each completion, shape (B,), float64:

        r_b = Σ_term weight_term · term(texts[b], answers[b])

    over the terms `config` enables (see `RewardConfig`). `answers` holds the reference answers
    (one per text); it may be None unless the correctness term is on.
    """
    terms = reward_terms(texts, answers, config)
    total = np.zeros(len(texts), dtype=np.float64)
    for name, weight in _weights(config).items():
        total += weight * terms[name]
    return total


def _references(texts: Sequence[str], answers: Sequence[str | None] | None) -> list[str | None]:
    if answers is None:
        return [None] * len(texts)
    if len(answers) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(answers)} answers")
    return list(answers)
