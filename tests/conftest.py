"""Shared fixtures: a tiny random Llama with a locally trained BPE tokenizer (no downloads).

The tiny model makes backend, stage and CLI tests run in seconds; tests marked `slow` use the
real embedded SmolLM2 model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    words = ("think answer pirate butler reason step number total apples price shop time because "
             "the a of and is to in we so then first next finally arr matey sir indeed").split()
    lines = [" ".join(words[(i * 7 + k) % len(words)] for k in range(12)) for i in range(300)]
    tags = ["<think>", "</think>", "<answer>", "</answer>", "0 1 2 3 4 5 6 7 8 9 + - * / = ?"]
    return lines + tags * 50


def build_tiny_model(folder: Path, *, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """Save a tiny random causal LM + tokenizer with a ChatML template into `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<pad>")
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    from si_toolkit.backends.hf import HFBackend

    return HFBackend(str(tiny_model_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def embedded_backend():
    """The real SmolLM2-135M-Instruct in fp32 (exact assertions need fp32)."""
    from si_toolkit.backends.hf import HFBackend

    return HFBackend("embedded", dtype="float32", device="cpu")


@pytest.fixture()
def write_set(tmp_path: Path):
    """Write a principle-set YAML file and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return _write


@pytest.fixture()
def one_torch_thread():
    """Torch on one thread for the test (training steps compare numbers that thread counts could move)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
