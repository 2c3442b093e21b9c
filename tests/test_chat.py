"""The Tülu chat template and SFT label masking."""

import pytest
import torch

from tulu_lab.chat import (IGNORE_INDEX, TULU_CHAT_TEMPLATE, encode_sft_example, install_tulu_template,
                           pad_batch, render_tulu)

SYSTEM = {"role": "system", "content": "You are helpful."}
U1 = {"role": "user", "content": "What is 3 + 4?"}
A1 = {"role": "assistant", "content": "3 + 4 = 7.\n#### 7"}
U2 = {"role": "user", "content": "And times 2?"}
A2 = {"role": "assistant", "content": "7 * 2 = 14.\n#### 14"}

# Expected renderings written out by hand from the template in the recipe notes.
CASES = [
    ([U1], False, "<|user|>\nWhat is 3 + 4?\n"),
    ([U1], True, "<|user|>\nWhat is 3 + 4?\n<|assistant|>\n"),
    ([U1, A1], False, "<|user|>\nWhat is 3 + 4?\n<|assistant|>\n3 + 4 = 7.\n#### 7</s>"),
    ([SYSTEM, U1, A1], False,
     "<|system|>\nYou are helpful.\n<|user|>\nWhat is 3 + 4?\n<|assistant|>\n3 + 4 = 7.\n#### 7</s>"),
    ([U1, A1, U2], True,
     "<|user|>\nWhat is 3 + 4?\n<|assistant|>\n3 + 4 = 7.\n#### 7</s>\n<|user|>\nAnd times 2?\n<|assistant|>\n"),
    ([U1, A1, U2, A2], False,
     "<|user|>\nWhat is 3 + 4?\n<|assistant|>\n3 + 4 = 7.\n#### 7</s>\n<|user|>\nAnd times 2?\n"
     "<|assistant|>\n7 * 2 = 14.\n#### 14</s>"),
]


@pytest.mark.parametrize("messages,gen,expected", CASES)
def test_render_matches_hand_written(messages, gen, expected):
    assert render_tulu(messages, "</s>", add_generation_prompt=gen) == expected


@pytest.mark.parametrize("messages,gen,expected", CASES)
def test_jinja_template_is_byte_identical(tiny, messages, gen, expected):
    _, tokenizer = tiny
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert rendered == expected.replace("</s>", tokenizer.eos_token)


def test_install_on_any_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    tok = install_tulu_template(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert tok.chat_template == TULU_CHAT_TEMPLATE


def _pieces(tokenizer, pieces):
    """Token ids and labels from hand-listed (text, trained) pieces; EOS given as None."""
    ids, labels = [], []
    for text, trained in pieces:
        piece = [tokenizer.eos_token_id] if text is None else tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def test_single_turn_layout(tiny):
    _, tok = tiny
    enc = encode_sft_example([U1, A1], tok, max_len=512)
    ids, labels = _pieces(tok, [("<|user|>\nWhat is 3 + 4?\n", False), ("<|assistant|>\n", False),
                                ("3 + 4 = 7.\n#### 7", True), (None, True)])
    assert enc["input_ids"].tolist() == ids
    assert enc["labels"].tolist() == labels
    # Only assistant content + EOS is trained.
    trained = [i for i, l in zip(enc["input_ids"].tolist(), enc["labels"].tolist()) if l != IGNORE_INDEX]
    assert tok.decode(trained) == "3 + 4 = 7.\n#### 7" + tok.eos_token
    # The ids equal tokenizing the rendered conversation in one go (training sees what sampling sees).
    assert ids == tok(render_tulu([U1, A1], tok.eos_token), add_special_tokens=False)["input_ids"]


def test_multi_turn_with_system_layout(tiny):
    _, tok = tiny
    enc = encode_sft_example([SYSTEM, U1, A1, U2, A2], tok, max_len=512)
    ids, labels = _pieces(tok, [
        ("<|system|>\nYou are helpful.\n", False), ("<|user|>\nWhat is 3 + 4?\n", False),
        ("<|assistant|>\n", False), ("3 + 4 = 7.\n#### 7", True), (None, True), ("\n", False),
        ("<|user|>\nAnd times 2?\n", False), ("<|assistant|>\n", False), ("7 * 2 = 14.\n#### 14", True),
        (None, True)])
    assert enc["input_ids"].tolist() == ids
    assert enc["labels"].tolist() == labels
    assert enc["attention_mask"].tolist() == [1] * len(ids)


def test_truncation_keeps_the_beginning(tiny):
    _, tok = tiny
    full = encode_sft_example([U1, A1], tok, max_len=512)
    prompt_len = int((full["labels"] == IGNORE_INDEX).sum())
    cut = encode_sft_example([U1, A1], tok, max_len=prompt_len + 2)
    assert cut["input_ids"].tolist() == full["input_ids"][: prompt_len + 2].tolist()
    assert cut["has_labels"] and int((cut["labels"] != IGNORE_INDEX).sum()) == 2
    none_left = encode_sft_example([U1, A1], tok, max_len=prompt_len)
    assert not none_left["has_labels"]


def test_malformed_messages_are_named():
    with pytest.raises(ValueError, match=r"messages\[1\].*role 'bot'"):
        render_tulu([U1, {"role": "bot", "content": "x"}], "</s>")
    with pytest.raises(ValueError, match=r"messages\[0\].*'role' and 'content'"):
        render_tulu([{"content": "x"}], "</s>")


def test_pad_batch(tiny):
    _, tok = tiny
    a = encode_sft_example([U1, A1], tok, 512)
    b = encode_sft_example([SYSTEM, U1, A1, U2, A2], tok, 512)
    batch = pad_batch([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(b["input_ids"]))
    n = len(a["input_ids"])
    assert batch["attention_mask"][0, n:].sum() == 0 and torch.all(batch["labels"][0, n:] == IGNORE_INDEX)


@pytest.mark.slow
def test_embedded_tokenizer_layout_matches_full_tokenization(embedded):
    _, tok = embedded
    for messages in ([U1, A1], [SYSTEM, U1, A1, U2, A2]):
        enc = encode_sft_example(messages, tok, 2048)
        assert enc["input_ids"].tolist() == tok(render_tulu(messages, tok.eos_token),
                                                add_special_tokens=False)["input_ids"]
