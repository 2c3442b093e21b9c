"""The loss walk-throughs of notebooks 02-04 reproduce the training losses on the tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from tulu_lab.config import LoraSettings, RLVRConfig
from tulu_lab.loss_examples import dpo_norm_example, grpo_group_example, sft_loss_example


def _rows():
    return [{"messages": [{"role": "user", "content": "What is 3 + 4?"},
                          {"role": "assistant", "content": "3 + 4 = 7.\n#### 7"}]},
            {"messages": [{"role": "user", "content": "Tom has 12 apples and buys 5 more. How many?"},
                          {"role": "assistant", "content": "Tom has 12 + 5 = 17 apples.\n#### 17"}]}]


def test_sft_example_is_the_summed_assistant_only_loss(tiny):
    from tulu_lab.chat import encode_sft_example
    from tulu_lab.losses import sft_loss

    model, tokenizer = tiny
    out = sft_loss_example(model, tokenizer, _rows())
    examples, tokens = out["examples"], out["tokens"]
    assert examples["scored (answer + EOS)"].sum() == out["n_tokens"] > 0
    assert examples["summed NLL"].sum() == pytest.approx(out["loss_sum"], rel=1e-5)
    assert out["loss_per_token"] == pytest.approx(out["loss_sum"] / out["n_tokens"])
    # each example alone gives its own row
    for i, row in enumerate(_rows()):
        e = encode_sft_example(row["messages"], tokenizer, max_len=256)
        with torch.no_grad():
            logits = model(input_ids=e["input_ids"][None]).logits
        alone, n = sft_loss(logits, e["labels"][None])
        assert examples.loc[i, "summed NLL"] == pytest.approx(float(alone), rel=1e-4)
        assert examples.loc[i, "scored (answer + EOS)"] == int(n)
    # the prompt is masked, the answer is not
    assert not tokens["in loss"].iloc[0] and tokens["in loss"].iloc[-1]
    assert "7" in "".join(tokens[tokens["in loss"]]["token"])
    assert tokens[tokens["in loss"]]["nll"].sum() == pytest.approx(examples.loc[0, "summed NLL"], rel=1e-5)


def test_dpo_norm_example_divides_the_log_ratios_by_length(tiny):
    from peft import get_peft_model

    from tulu_lab.models import lora_config

    model, tokenizer = tiny
    policy = get_peft_model(copy.deepcopy(model), lora_config(r=4, alpha=8, dropout=0.0,
                                                              target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # move the adapters away from their zero start
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    prompt = [{"role": "user", "content": "What is 3 + 4?"}]
    pairs = [{"chosen": prompt + [{"role": "assistant", "content": "3 + 4 = 7.\n#### 7"}],
              "rejected": prompt + [{"role": "assistant", "content": "3 + 4 = 8, so the answer is 8 and "
                                                                      "I hope it is correct.\n#### 8"}]}]
    table = dpo_norm_example(policy, tokenizer, pairs, beta=5.0)
    row = table.iloc[0]
    assert row["rejected tokens"] > row["chosen tokens"]
    assert row["chosen log-ratio / token"] == pytest.approx(row["chosen log-ratio (sum)"] / row["chosen tokens"])
    assert row["margin dpo_norm"] == pytest.approx(5.0 * (row["chosen log-ratio / token"]
                                                          - row["rejected log-ratio / token"]), rel=1e-5)
    assert row["margin dpo"] == pytest.approx(5.0 * (row["chosen log-ratio (sum)"] - row["rejected log-ratio (sum)"]),
                                              rel=1e-5)
    assert row["loss dpo_norm"] == pytest.approx(float(-torch.nn.functional.logsigmoid(
        torch.tensor(row["margin dpo_norm"]))), rel=1e-5)
    assert row["margin dpo"] != pytest.approx(row["margin dpo_norm"])


def test_grpo_group_example_normalises_rewards_within_the_group(tiny):
    from tulu_lab.data import generate_word_problems, rlvr_row

    model, tokenizer = tiny
    cfg = RLVRConfig.cpu_preset(samples_per_prompt=4, max_new_tokens=6, temperature=1.0, precision="fp32",
                                lora=LoraSettings(r=2, alpha=4))
    row = rlvr_row(generate_word_problems(1, seed=3)[0])
    table = grpo_group_example(cfg, model, tokenizer, row, seed=0)
    assert len(table) == 4 and table["response"].map(len).gt(0).any()
    rewards = torch.tensor(table["reward"].tolist())
    expected = (rewards - rewards.mean()) / (rewards.std() + cfg.advantage_eps) if rewards.std() > 0 else \
        torch.zeros(4)
    assert table["advantage"].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert set(table["correct"]) <= {True, False}
    # the rewards are the verifier's, an unfinished answer gets the non-stop penalty instead
    assert table["reward"].tolist() == [cfg.correct_reward * c if s else cfg.non_stop_penalty
                                        for c, s in zip(table["correct"], table["stopped"])]
