"""The one place that renders (variant, prompt) into token ids and parses <think>/<answer> spans.

Rendering (SI-SPEC §1): the principle text goes into the system message followed by the CoT
instruction; the user message is the prompt; the assistant turn is opened and, by default,
prefilled with `<think>` + newline. The prefill belongs to the rendered prompt (identical under
every condition), so the response starts inside the chain of thought.

Spans over the generated token ids partition the response: `cot` = tokens [0, cot_end) (the
closing `</think>` included), `answer` = tokens [cot_end, n), `full` = all n tokens. Hence
L_full = L_cot + L_answer exactly (SI-SPEC §6.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "render_unit_prompts",
    "COT_INSTRUCTION",
    "PREFILL",
    "ParsedResponse",
    "render_messages",
    "render_system",
    "render_prompt_ids",
    "render_prompt_text",
    "render_request_ids",
    "parse_response",
    "is_exact_format",
]

COT_INSTRUCTION = (
    "Think step by step before answering. Write your reasoning inside <think></think> tags, "
    "then give your final answer inside <answer></answer> tags, like this:\n"
    "<think>your reasoning</think><answer>your answer</answer>"
)
PREFILL = "<think>\n"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"

# Exact format: non-empty CoT, then the answer block with non-empty content, nothing after.
_EXACT = re.compile(r"^<think>(?P<cot>.*?\S.*?)</think>\s*<answer>(?P<answer>.*?\S.*?)</answer>\s*$", re.DOTALL)


@dataclass(frozen=True)
class ParsedResponse:
    """A generated response decoded and split into spans (token indices)."""

    text: str  # decoded without special tokens and without the prefill
    cot_end: int  # cot span = token_ids[:cot_end]; answer span = token_ids[cot_end:]
    n_tokens: int
    format_ok: bool


def render_system(variant_text: str) -> str:
    """The system prompt of one variant: its text, a blank line, then the CoT instruction."""
    return f"{variant_text.strip()}\n\n{COT_INSTRUCTION}"


def render_messages(variant_text: str, prompt_text: str, *, system_role: bool = True) -> list[dict[str, str]]:
    """Chat messages for one (variant, prompt); without a system role the principle leads the user turn."""
    system = render_system(variant_text)
    if system_role:
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt_text}]
    return [{"role": "user", "content": f"{system}\n\n{prompt_text}"}]


def render_prompt_text(tokenizer: Any, variant_text: str, prompt_text: str, *, prefill: bool = True) -> str:
    """The full prompt string (chat template applied, generation prompt added, prefill appended)."""
    text = _apply_template(tokenizer, render_messages(variant_text, prompt_text, system_role=True))
    if text is None or variant_text.strip() not in text:
        # Templates without a system role either raise or silently drop the system message.
        text = _apply_template(tokenizer, render_messages(variant_text, prompt_text, system_role=False))
        if text is None:
            raise ValueError("the tokenizer's chat template failed on a plain user message")
    return text + (PREFILL if prefill else "")


def render_prompt_ids(tokenizer: Any, variant_text: str, prompt_text: str, *, prefill: bool = True) -> list[int]:
    """Token ids of the rendered prompt; the template already holds any special tokens it needs."""
    text = render_prompt_text(tokenizer, variant_text, prompt_text, prefill=prefill)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_request_ids(tokenizer: Any, system_text: str, user_text: str) -> list[int]:
    """Token ids of a plain request: system + user message and the generation prompt, with no
    CoT instruction and no prefill. For tasks whose whole reply is the result (e.g. asking the
    model to rewrite a principle), never for the (variant, prompt) pairs SI is measured on.
    """
    messages = [{"role": "system", "content": system_text}, {"role": "user", "content": user_text}]
    text = _apply_template(tokenizer, messages)
    if text is None or system_text.strip() not in text:
        text = _apply_template(tokenizer, [{"role": "user", "content": f"{system_text}\n\n{user_text}"}])
        if text is None:
            raise ValueError("the tokenizer's chat template failed on a plain user message")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _apply_template(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    except Exception:  # noqa: BLE001 - jinja raises arbitrary errors for unsupported roles
        return None


def is_exact_format(text: str, *, prefill: bool = True) -> bool:
    """True for exactly `<think>COT</think><answer>ANSWER</answer>` with non-empty parts.

    `text` is the response as generated; with the prefill the `<think>` opener is in the prompt.
    """
    full = (PREFILL + text) if prefill else text
    return _EXACT.match(full.strip()) is not None


def parse_response(tokenizer: Any, token_ids: list[int], *, prefill: bool = True) -> ParsedResponse:
    """Decode a response and find where its CoT span ends (SI-SPEC §1).

    cot_end is the number of tokens up to and including the one that completes `</think>`.
    Without `</think>`, the CoT runs up to the token where `<answer>` starts, else to the end.
    """
    n = len(token_ids)
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    raw = tokenizer.decode(token_ids, skip_special_tokens=False)
    close = raw.find(THINK_CLOSE)
    if close >= 0:
        cot_end = _first_prefix_reaching(tokenizer, token_ids, close + len(THINK_CLOSE))
    else:
        open_at = raw.find(ANSWER_OPEN)
        cot_end = n if open_at < 0 else _first_prefix_reaching(tokenizer, token_ids, open_at + 1) - 1
    return ParsedResponse(text=text, cot_end=cot_end, n_tokens=n, format_ok=is_exact_format(text, prefill=prefill))


def _first_prefix_reaching(tokenizer: Any, token_ids: list[int], n_chars: int) -> int:
    """Smallest t such that decode(token_ids[:t]) has at least n_chars characters (binary search).

    Decoded prefix length grows with t (byte-level tokens can hold partial characters, which only
    delays the growth), so the search needs O(log n) decodes instead of n.
    """
    lo, hi = 0, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(token_ids[:mid], skip_special_tokens=False)) >= n_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def render_unit_prompts(tokenizer: Any, variant_texts: list[str], prompts: list[dict[str, Any]], *,
                        prefill: bool) -> dict[tuple[str, int], list[int]]:
    """Rendered prompt ids for every (prompt id, variant index) of a unit."""
    return {
        (p["id"], i): render_prompt_ids(tokenizer, text, p["text"], prefill=prefill)
        for p in prompts
        for i, text in enumerate(variant_texts)
    }
