"""Shared test helpers: a tiny trained tokenizer and a saver for tiny Hugging Face models.

Typical use for a tiny model of any architecture (GPT-2, OPT, Llama, BERT...)::

    def test_something(tiny_tokenizer, tmp_path):
        cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, ...)
        folder = save_tiny_model(LlamaForCausalLM(cfg), tiny_tokenizer, tmp_path / "llama")

Import the helper with ``from conftest import save_tiny_model`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

#: Special tokens of the tiny tokenizer (ids 0..3, in this order).
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<pad>", "<unk>", "<mask>")
TINY_VOCAB_SIZE = 400
TINY_TRAIN_CHARS = 50_000


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE, train_chars: int = TINY_TRAIN_CHARS) -> Any:
    """A byte-level BPE tokenizer trained on the packaged C4 sample, as a PreTrainedTokenizerFast.

    Byte-level means every string encodes without unknown tokens. ``len(tok)`` is its vocab size
    (special tokens included); bos/eos are ``<|endoftext|>``, pad is ``<pad>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from gptq_export.data import packaged_text

    text = packaged_text("c4")[:train_chars]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(text.splitlines(), trainer=trainer)
    eos, pad, unk, mask = TINY_SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=eos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        mask_token=mask,
        model_max_length=2048,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """Session-wide tiny byte-level BPE tokenizer (~400 tokens; ``len(tiny_tokenizer)`` = vocab size).

    Shared across tests: do not add tokens to it; build your own with build_tiny_tokenizer() instead.
    """
    return build_tiny_tokenizer()


def save_tiny_model(model: torch.nn.Module, tokenizer: Any | None, path: str | os.PathLike[str]) -> Path:
    """Save a Hugging Face model (safetensors + config.json) and its tokenizer into ``path``.

    Works for any PreTrainedModel (GPT-2, OPT, Llama, BERT...); ``tokenizer`` may be None for a
    folder without tokenizer files. Returns the folder, ready for ``gptq_export.models.load_model``.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def cuda():
    """torch.device("cuda") where CuPy and PyTorch both reach a CUDA GPU; else the test is skipped
    with the reason (CI has no GPU: the gpu-marked tests run on the device tool's H100 / H200)."""
    pytest.importorskip("cupy")
    from gptq_export.kernels.cuda import cuda_available

    reason = cuda_available()
    if reason:
        pytest.skip(reason)
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    return torch.device("cuda")
