"""Tiny random-weight Llama models with a locally trained tokenizer, for fast tests.

``make_tiny_llama(folder)`` writes a normal checkpoint folder (config.json, model.safetensors,
tokenizer.json) that ``load_model(folder)`` loads like any other: the real loading code is exercised
without any download. A byte-level BPE tokenizer is trained on a small built-in corpus with the
``tokenizers`` library, so every string is encodable.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Enough text for the BPE merges to cover the chat markers, digits and common English words.
_CORPUS = [
    "<|system|>\nYou are a helpful assistant.\n<|user|>\nWhat is 3 + 4?\n<|assistant|>\n3 + 4 = 7.\n#### 7",
    "<|user|>\nTom has 12 apples and buys 5 more. How many apples does he have?\n<|assistant|>\n"
    "Tom has 12 + 5 = 17 apples.\n#### 17",
    "Solve step by step and end with a line '#### <answer>'.",
    "The answer is 42. The final answer is $\\boxed{42}$. I hope it is correct.",
    "A train travels 60 miles per hour for 3 hours, so it travels 60 * 3 = 180 miles.",
    "Write a short poem about the sea. Do not use any commas. Answer in lowercase letters only.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 70 80 90 100 1000",
    "She sells the remainder at the market for $2 each, and makes 9 * 2 = 18 dollars every day.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<pad>"]


def train_tiny_tokenizer(vocab_size: int = 384, extra_texts: list[str] | None = None):
    """A byte-level BPE tokenizer trained here, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_CORPUS * 4 + list(extra_texts or []), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<pad>",
                                   padding_side="left")


def tiny_llama_config(vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                      num_kv_heads: int = 2, intermediate_size: int = 128, eos_token_id: int = 0,
                      pad_token_id: int = 1, tie_word_embeddings: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       num_key_value_heads=num_kv_heads, max_position_embeddings=1024,
                       eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None,
                       tie_word_embeddings=tie_word_embeddings)


def make_tiny_llama(folder: str | os.PathLike | None = None, *, vocab_size: int = 384, hidden_size: int = 64,
                    num_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random-weight Llama (default 2 layers, width 64) and its tokenizer.

    With ``folder`` the pair is saved there as a safetensors checkpoint and can be reloaded with
    ``tulu_lab.models.load_model(folder)``. Returns (model, tokenizer).
    """
    from transformers import LlamaForCausalLM

    tokenizer = train_tiny_tokenizer(vocab_size)
    config = tiny_llama_config(len(tokenizer), hidden_size=hidden_size, num_layers=num_layers,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    model.eval()
    return model, tokenizer
