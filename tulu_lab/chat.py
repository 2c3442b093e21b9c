"""The Tülu chat format and SFT example encoding with assistant-only labels.

The "tulu" template uses plain-text role markers (not special tokens) and closes each assistant turn
with the tokenizer's EOS token (open-instruct, ``CHAT_TEMPLATES["tulu"]``)::

    <|system|>\\n{content}\\n
    <|user|>\\n{content}\\n
    <|assistant|>\\n{content}{eos}\\n      ("\\n" omitted after the last message)
    <|assistant|>\\n                      (generation prompt)

No BOS is added by the template.
"""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")

# Jinja version, byte-identical to render_tulu() below (a test checks it on many conversations).
TULU_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}"
    "{{ '<|assistant|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
)


def validate_messages(messages: Sequence[dict], *, where: str = "messages") -> None:
    """Raise ValueError naming the offending message when a conversation is malformed."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}[{i}]: expected a dict with 'role' and 'content', got {message!r:.80}")
        if message["role"] not in ROLES:
            raise ValueError(f"{where}[{i}]: role {message['role']!r} is not one of {ROLES}")
        if not isinstance(message["content"], str):
            raise ValueError(f"{where}[{i}]: content must be a string, got {type(message['content']).__name__}")


def render_tulu(messages: Sequence[dict], eos_token: str, add_generation_prompt: bool = False) -> str:
    """The Tülu template in plain Python (the reference the Jinja template is tested against)."""
    validate_messages(messages)
    parts = []
    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        role, content = message["role"], message["content"]
        if role == "assistant":
            parts.append(f"<|assistant|>\n{content}{eos_token}" + ("" if last else "\n"))
        else:
            parts.append(f"<|{role}|>\n{content}\n")
        if last and add_generation_prompt:
            parts.append("<|assistant|>\n")
    return "".join(parts)


def install_tulu_template(tokenizer):
    """Make ``tokenizer.apply_chat_template`` render the Tülu format; returns the tokenizer."""
    tokenizer.chat_template = TULU_CHAT_TEMPLATE
    return tokenizer


def prompt_text(messages: Sequence[dict], tokenizer) -> str:
    """A conversation rendered in the Tülu format, ending with the generation prompt."""
    return render_tulu(messages, tokenizer.eos_token, add_generation_prompt=True)


def _encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_sft_example(messages: Sequence[dict], tokenizer, max_len: int) -> dict[str, torch.Tensor]:
    """Token ids and labels for one conversation, with loss on assistant content + EOS only.

    The conversation is tokenized piece by piece: role markers and user/system turns (label -100),
    then each assistant content (labels = ids) followed by the EOS id (label = EOS). Tokenizing the
    prompt part exactly as it is tokenized at generation time means the model learns to continue the
    very token sequence it will see when sampling. Truncation keeps the first ``max_len`` tokens
    (as open-instruct does); an example whose assistant tokens are all cut has no label left, which
    ``has_labels`` reports so callers can drop it.

    Returns dict with ``input_ids``, ``labels``, ``attention_mask`` (1-D LongTensors) and ``has_labels``.
    """
    validate_messages(messages)
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("tokenizer has no eos_token_id: the Tülu format closes assistant turns with EOS")

    input_ids: list[int] = []
    labels: list[int] = []

    def add(ids: list[int], trainable: bool):
        input_ids.extend(ids)
        labels.extend(ids if trainable else [IGNORE_INDEX] * len(ids))

    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        role, content = message["role"], message["content"]
        if role == "assistant":
            add(_encode_text(tokenizer, "<|assistant|>\n"), False)
            add(_encode_text(tokenizer, content), True)
            add([eos_id], True)
            if not last:
                add(_encode_text(tokenizer, "\n"), False)
        else:
            add(_encode_text(tokenizer, f"<|{role}|>\n{content}\n"), False)

    input_ids, labels = input_ids[:max_len], labels[:max_len]
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
        "has_labels": any(label != IGNORE_INDEX for label in labels),
    }


def pad_batch(examples: Sequence[dict], pad_id: int, *, side: str = "right") -> dict[str, torch.Tensor]:
    """Stack encoded examples, padding to the longest (no packing, as in Tülu 3)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(e["input_ids"]) for e in examples)
    out = {"input_ids": [], "labels": [], "attention_mask": []}
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    for e in examples:
        n = width - len(e["input_ids"])
        for key in out:
            pad = torch.full((n,), fill[key], dtype=torch.long)
            out[key].append(torch.cat([e[key], pad]) if side == "right" else torch.cat([pad, e[key]]))
    return {key: torch.stack(rows) for key, rows in out.items()}
