"""Chat rendering and span parsing (SI-SPEC §1)."""

from __future__ import annotations

import pytest

from si_toolkit.chat import (COT_INSTRUCTION, PREFILL, is_exact_format, parse_response, render_prompt_text,
                             render_request_ids)


def test_render_puts_principle_and_instruction_in_system_and_prefills(tiny_backend) -> None:
    text = render_prompt_text(tiny_backend.tokenizer, "Be a pirate.", "What is 2+2?")
    assert text.startswith("<|im_start|>system\nBe a pirate.\n\n" + COT_INSTRUCTION)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n" + PREFILL)
    assert not render_prompt_text(tiny_backend.tokenizer, "x", "y", prefill=False).endswith(PREFILL)


class _NoSystemTokenizer:
    """A template that raises on a system role, as some model families' templates do."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        if any(m["role"] == "system" for m in messages):
            raise ValueError("System role not supported")
        return "".join(f"[{m['role']}] {m['content']}\n" for m in messages) + "[assistant] "


def test_render_falls_back_to_user_turn_without_system_role() -> None:
    text = render_prompt_text(_NoSystemTokenizer(), "Be a pirate.", "Q?")
    assert text.startswith("[user] Be a pirate.\n\n" + COT_INSTRUCTION + "\n\nQ?")
    assert text.endswith("[assistant] " + PREFILL)


def test_render_request_has_no_cot_instruction_and_no_prefill(tiny_backend) -> None:
    tok = tiny_backend.tokenizer
    text = tok.decode(render_request_ids(tok, "You edit principles.", "Rewrite: Be kind."))
    assert text == ("<|im_start|>system\nYou edit principles.<|im_end|>\n<|im_start|>user\nRewrite: Be kind.<|im_end|>\n"
                    "<|im_start|>assistant\n")


class _NoSystemIds(_NoSystemTokenizer):
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_render_request_falls_back_to_user_turn_without_system_role() -> None:
    ids = render_request_ids(_NoSystemIds(), "You edit principles.", "Rewrite it.")
    assert "".join(map(chr, ids)) == "[user] You edit principles.\n\nRewrite it.\n[assistant] "


@pytest.mark.parametrize(
    ("response", "ok"),
    [
        ("reason</think><answer>4</answer>", True),
        ("reason</think>\n<answer>4</answer>\n", True),
        ("</think><answer>4</answer>", False),  # empty CoT
        ("reason</think><answer> </answer>", False),  # empty answer
        ("reason</think><answer>4</answer> extra", False),  # text after the answer
        ("reason<answer>4</answer>", False),  # CoT never closed
        ("reason", False),
    ],
    ids=["exact", "whitespace", "empty-cot", "empty-answer", "trailing", "unclosed", "bare"],
)
def test_exact_format(response: str, ok: bool) -> None:
    assert is_exact_format(response) is ok


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_parse_spans_partition_at_think_close(tiny_backend) -> None:
    tok = tiny_backend.tokenizer
    ids = _ids(tok, "the total is 4</think><answer>4</answer>") + [tok.eos_token_id]
    parsed = parse_response(tok, ids)
    assert parsed.format_ok and parsed.n_tokens == len(ids)
    assert tok.decode(ids[: parsed.cot_end]).endswith("</think>")
    assert tok.decode(ids[parsed.cot_end :], skip_special_tokens=True) == "<answer>4</answer>"
    assert parsed.text == "the total is 4</think><answer>4</answer>"  # EOS removed from the text


def test_parse_without_think_close_cuts_before_answer_tag(tiny_backend) -> None:
    tok = tiny_backend.tokenizer
    ids = _ids(tok, "so we add<answer>4</answer>")
    parsed = parse_response(tok, ids)
    assert not parsed.format_ok
    assert "<answer>" not in tok.decode(ids[: parsed.cot_end])
    assert tok.decode(ids[parsed.cot_end :]).endswith("<answer>4</answer>")


def test_parse_broken_format_whole_response_is_cot(tiny_backend) -> None:
    tok = tiny_backend.tokenizer
    ids = _ids(tok, "arr matey the apples")
    parsed = parse_response(tok, ids)
    assert parsed.cot_end == len(ids) and not parsed.format_ok
