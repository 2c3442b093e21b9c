"""The DPO loop on a tiny random Llama: reference = adapters off, cached reference, dpo vs dpo_norm,
learning, full fine-tuning, errors, exact resume."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tulu_lab.config import DPOConfig, LoraSettings  # noqa: E402
from tulu_lab.dpo import pair_logprobs, preference_accuracy, train_dpo  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from sft_resume_script import load_tiny  # noqa: E402

BETA = 0.5


def pairs(n: int = 16) -> list[dict]:
    """Arithmetic prompts; chosen states the right sum, rejected a wrong one (with a different length)."""
    out = []
    for i in range(n):
        a, b = 2 + i % 5, 3 + i // 5
        user = {"role": "user", "content": f"What is {a} + {b}?"}
        out.append({"chosen": [user, {"role": "assistant", "content": f"{a} + {b} = {a + b}.\n#### {a + b}"}],
                    "rejected": [dict(user), {"role": "assistant",
                                              "content": f"{a} + {b} = {a + b + 10}, I think.\n#### {a + b + 10}"}]})
    return out


def config(tmp_path, name="run", **overrides) -> DPOConfig:
    values = dict(output_dir=str(tmp_path / name), seed=5, learning_rate=1e-2, warmup_ratio=0.0, beta=BETA,
                  per_device_batch=4, gradient_accumulation=1, max_seq_len=64, precision="fp32",
                  lora=LoraSettings(r=8, alpha=16, dropout=0.0), epochs=1, checkpoint_every=0, grad_clip=1.0)
    return DPOConfig(**{**values, **overrides})


def metrics(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def trained_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------------


def test_reference_is_the_network_with_adapters_disabled(tiny_model_dir, tmp_path):
    model, tokenizer = load_tiny(tiny_model_dir)
    summary = train_dpo(config(tmp_path, max_steps=3), model, tokenizer, pairs(), progress=False)
    policy = summary["model"]
    base, _ = load_tiny(tiny_model_dir)
    with_adapters_off = pair_logprobs(policy, tokenizer, pairs(), disable_adapters=True)
    base_scores = pair_logprobs(base, tokenizer, pairs())
    with_adapters_on = pair_logprobs(policy, tokenizer, pairs())
    for key in ("chosen", "rejected"):
        assert torch.equal(with_adapters_off[key], base_scores[key])
        assert not torch.allclose(with_adapters_on[key], base_scores[key])  # training moved the policy


def test_cached_and_uncached_reference_give_the_same_run(tiny_model_dir, tmp_path):
    runs = []
    for cache in (True, False):
        model, tokenizer = load_tiny(tiny_model_dir)
        # 2 x 2 micro-batches: the cache is indexed per micro-batch under accumulation too
        cfg = config(tmp_path, f"cache-{cache}", max_steps=3, per_device_batch=2, gradient_accumulation=2)
        summary = train_dpo(cfg, model, tokenizer, pairs(), progress=False, cache_reference=cache)
        runs.append((metrics(cfg.metrics_path), trained_weights(summary["model"])))
    (cached, w_cached), (uncached, w_uncached) = runs
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert [r[key] for r in cached] == pytest.approx([r[key] for r in uncached], rel=1e-5, abs=1e-6), key
    for name in w_cached:
        torch.testing.assert_close(w_cached[name], w_uncached[name], atol=1e-5, rtol=1e-4)


def test_reference_cache_covers_exactly_the_pairs_a_run_trains_on(tmp_path):
    from tulu_lab.dpo import pairs_in_run

    cfg = config(tmp_path, per_device_batch=2, gradient_accumulation=2)  # 4 pairs per step
    assert len(pairs_in_run(16, cfg, 3)) == 12          # 3 of the 4 steps of an epoch
    assert pairs_in_run(16, cfg, 4) == list(range(16))  # a whole epoch
    assert pairs_in_run(16, cfg, 6) == list(range(16))  # and into the next one


@pytest.mark.parametrize("loss_type", ["dpo_norm", "dpo"])
def test_logged_rewards_follow_the_loss_type(tiny_model_dir, tmp_path, loss_type):
    """Step 1 logs the rewards of the starting policy: with adapters already away from zero they are
    beta * (policy - reference) per pair, per-token means for dpo_norm and sums for dpo."""
    from peft import get_peft_model

    from tulu_lab.models import lora_config

    model, tokenizer = load_tiny(tiny_model_dir)
    model = get_peft_model(model, lora_config(r=8, alpha=16, dropout=0.0,
                                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                              "gate_proj", "up_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    data = pairs(4)
    policy = pair_logprobs(model, tokenizer, data)
    ref = pair_logprobs(model, tokenizer, data, disable_adapters=True)
    chosen, rejected = policy["chosen"] - ref["chosen"], policy["rejected"] - ref["rejected"]
    if loss_type == "dpo_norm":
        chosen, rejected = chosen / policy["chosen_lengths"], rejected / policy["rejected_lengths"]
    cfg = config(tmp_path, loss_type=loss_type, max_steps=1, per_device_batch=4, gradient_accumulation=1)
    summary = train_dpo(cfg, model, tokenizer, data, progress=False)
    first = metrics(cfg.metrics_path)[0]
    assert first["rewards/chosen"] == pytest.approx(float(BETA * chosen.mean()), rel=1e-5)
    assert first["rewards/rejected"] == pytest.approx(float(BETA * rejected.mean()), rel=1e-5)
    margins = BETA * (chosen - rejected)
    assert first["loss"] == pytest.approx(float(-torch.nn.functional.logsigmoid(margins).mean()), rel=1e-5)
    assert first["rewards/accuracies"] == pytest.approx(float((margins > 0).float().mean()))
    assert summary["loss_type"] == loss_type


@pytest.mark.parametrize("loss_type", ["dpo_norm", "dpo"])
def test_preference_accuracy_rises(tiny_model_dir, tmp_path, loss_type):
    model, tokenizer = load_tiny(tiny_model_dir)
    beta = 5.0 if loss_type == "dpo_norm" else 0.1  # dpo_norm: the paper's beta
    cfg = config(tmp_path, loss_type=loss_type, beta=beta, epochs=4)
    summary = train_dpo(cfg, model, tokenizer, pairs(), progress=False)
    log = metrics(cfg.metrics_path)
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # fresh adapters: policy == reference
    assert log[-1]["loss"] < 0.6 * log[0]["loss"]
    accuracy = preference_accuracy(summary["model"], tokenizer, pairs(), beta=beta, loss_type=loss_type)
    assert accuracy >= 0.9
    assert summary["final_accuracy"] == log[-1]["rewards/accuracies"]


def test_fresh_adapters_have_zero_margins(tiny_model_dir):
    from tulu_lab.models import attach_lora, lora_config

    model, tokenizer = load_tiny(tiny_model_dir)
    model = attach_lora(model, lora_config(r=4, target_modules=["q_proj", "v_proj"]))
    assert preference_accuracy(model, tokenizer, pairs(4), beta=5.0, loss_type="dpo_norm") == 0.0
    with pytest.raises(ValueError, match="reference_model"):
        preference_accuracy(load_tiny(tiny_model_dir)[0], tokenizer, pairs(4), beta=5.0, loss_type="dpo_norm")


def test_full_fine_tuning_with_a_frozen_copy_or_a_cache(tiny_model_dir, tmp_path):
    runs = []
    for cache in (True, False):
        model, tokenizer = load_tiny(tiny_model_dir)
        cfg = config(tmp_path, f"full-{cache}", lora=None, learning_rate=1e-3, max_steps=4)
        summary = train_dpo(cfg, model, tokenizer, pairs(), progress=False, cache_reference=cache)
        runs.append(metrics(cfg.metrics_path))
        assert not hasattr(summary["model"], "peft_config")
    assert [r["loss"] for r in runs[0]] == pytest.approx([r["loss"] for r in runs[1]], rel=1e-5)
    assert runs[0][-1]["loss"] < runs[0][0]["loss"]
    trained = summary["model"]
    reference, _ = load_tiny(tiny_model_dir)
    accuracy = preference_accuracy(trained, tokenizer, pairs(), beta=BETA, loss_type="dpo_norm",
                                   reference_model=reference)
    assert accuracy > 0.5


def test_malformed_pairs_fail_clearly(tiny_model_dir, tmp_path):
    model, tokenizer = load_tiny(tiny_model_dir)
    cfg = config(tmp_path)
    good = pairs(8)
    with pytest.raises(ValueError, match="empty"):
        train_dpo(cfg, model, tokenizer, [], progress=False)
    with pytest.raises(ValueError, match=r"pairs\[1\]: missing field 'rejected'"):
        train_dpo(cfg, model, tokenizer, [good[0], {"chosen": good[1]["chosen"]}], progress=False)
    other_prompt = dict(good[2], rejected=good[3]["rejected"])
    with pytest.raises(ValueError, match=r"pairs\[2\]: 'chosen' and 'rejected' must share the prompt"):
        train_dpo(cfg, model, tokenizer, good[:2] + [other_prompt], progress=False)
    ends_with_user = dict(good[1], chosen=good[1]["chosen"][:1])
    with pytest.raises(ValueError, match=r"pairs\[1\]\['chosen'\]: the last message must be the assistant"):
        train_dpo(cfg, model, tokenizer, [good[0], ends_with_user], progress=False)
    with pytest.raises(ValueError, match="effective_batch=4"):
        train_dpo(cfg, model, tokenizer, good[:3], progress=False)


def test_resume_reproduces_the_uninterrupted_run(tiny_model_dir, tmp_path):
    """Checkpoint at steps 2 and 4 of 6; the newest one and the final folder are removed (a run that
    died after step 4's checkpoint was written), then resuming redoes steps 5-6 identically."""
    cfg = config(tmp_path, max_steps=6, checkpoint_every=2, lora=LoraSettings(r=4, alpha=8, dropout=0.1))
    model, tokenizer = load_tiny(tiny_model_dir)
    first = train_dpo(cfg, model, tokenizer, pairs(), progress=False)
    want_metrics = [{k: v for k, v in r.items() if k != "step_time"} for r in metrics(cfg.metrics_path)]
    want_weights = trained_weights(first["model"])
    assert sorted(p.name for p in Path(cfg.output_dir).glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    shutil.rmtree(Path(cfg.output_dir) / "final")

    model, tokenizer = load_tiny(tiny_model_dir)
    second = train_dpo(cfg, model, tokenizer, pairs(), progress=False)
    assert second["start_step"] == 4
    got_metrics = [{k: v for k, v in r.items() if k != "step_time"} for r in metrics(cfg.metrics_path)]
    assert got_metrics == want_metrics
    got_weights = trained_weights(second["model"])
    for name in want_weights:
        assert torch.equal(got_weights[name], want_weights[name]), name


def multi_turn_pairs() -> list[dict]:
    """Pairs with an earlier assistant turn (scored in both answers) and answers of unequal length."""
    history = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"},
               {"role": "user", "content": "What is 2 + 2?"}]
    return [{"chosen": history + [{"role": "assistant", "content": "2 + 2 = 4.\n#### 4"}],
             "rejected": history + [{"role": "assistant", "content": "5"}]},
            {"chosen": history[-1:] + [{"role": "assistant", "content": "4"}],
             "rejected": history[-1:] + [{"role": "assistant", "content": "It is 2 + 2 = 22, surely.\n#### 22"}]}]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_rows_score_what_separate_rows_score(tiny_model_dir, tmp_path, attention):
    model, tokenizer = load_tiny(tiny_model_dir)
    policy = train_dpo(config(tmp_path, max_steps=2), model, tokenizer, pairs(), progress=False)["model"]
    policy.set_attn_implementation(attention)
    data = pairs(6) + multi_turn_pairs()
    for adapters_off in (False, True):
        shared = pair_logprobs(policy, tokenizer, data, batch_size=3, disable_adapters=adapters_off, share_prompt=True)
        separate = pair_logprobs(policy, tokenizer, data, batch_size=3, disable_adapters=adapters_off,
                                 share_prompt=False)
        for key in ("chosen", "rejected"):
            torch.testing.assert_close(shared[key], separate[key], atol=1e-4, rtol=1e-5)
        for key in ("chosen_lengths", "rejected_lengths"):
            assert torch.equal(shared[key], separate[key])


def test_shared_prompt_training_matches_separate_rows(tiny_model_dir, tmp_path):
    runs = []
    for share in (True, False):
        model, tokenizer = load_tiny(tiny_model_dir)
        cfg = config(tmp_path, f"share-{share}", max_steps=3, share_prompt=share)
        summary = train_dpo(cfg, model, tokenizer, pairs(), progress=False)
        runs.append((metrics(cfg.metrics_path), trained_weights(summary["model"])))
    (shared, w_shared), (separate, w_separate) = runs
    for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen"):
        assert [r[key] for r in shared] == pytest.approx([r[key] for r in separate], rel=1e-4, abs=1e-5), key
    assert all(a["tokens"] < b["tokens"] for a, b in zip(shared, separate))  # the prompt ran once
    for name in w_shared:
        torch.testing.assert_close(w_shared[name], w_separate[name], atol=1e-5, rtol=1e-4)


def test_shared_prompt_refuses_attention_without_custom_masks(tiny_model_dir):
    from tulu_lab.dpo import _attention_bias

    model, _ = load_tiny(tiny_model_dir)
    model.config._attn_implementation = "flash_attention_2"  # as a GPU model would report it
    with pytest.raises(ValueError, match="share_prompt=False"):
        _attention_bias(model, torch.ones(1, 1, 2, 2, dtype=torch.bool))
