"""tulu_lab.losses against TRL 1.16 on identical inputs (TRL is a test-only dependency).

What is compared, precisely:

* DPO: TRL's ``DPOTrainer._compute_loss`` is called unbound, with a ``SimpleNamespace`` standing in
  for the trainer (the attributes the method reads: beta, loss_types, an identity accelerator,
  metric dicts...). Its model and reference are two tiny random Llamas patched with TRL's own
  ``add_fused_lm_head``, so TRL computes the per-token log-probs its own way. Our side runs the
  same two models for logits and goes through ``sequence_logprobs`` -> ``logprob_sum`` ->
  ``dpo_loss``. Loss values and the gradients on every policy parameter must agree, for
  ``"sigmoid"`` vs our ``"dpo"`` and ``"sigmoid_norm"`` vs our ``"dpo_norm"``.
  TRL logs ``rewards/*`` from the UNnormalised log-ratios even for sigmoid_norm, whereas our
  rewards are the normalised ones inside the sigmoid; rewards are compared for "sigmoid" only.
* GRPO: ``GRPOTrainer._compute_loss`` is called unbound the same way; its only model call,
  ``self._get_per_token_logps_and_entropies``, returns a fixed leaf tensor of "new" log-probs,
  so both sides see identical new/old/ref log-probs, mask and advantages. Loss, gradient with
  respect to the new log-probs, mean KL and clip fraction must agree for TRL loss types
  "grpo", "bnpo", "dr_grpo", and TRL "dapo" (one micro-batch) against our "bnpo".
* Group advantages: TRL computes them inline in ``_generate_and_score_completions`` (not callable
  without generation); we compare with the same formula built from TRL's own ``nanstd``
  (Bessel-corrected) and TRL's eps of 1e-4.
"""

import copy
import os
from collections import defaultdict
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("trl")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from trl.trainer.utils import add_fused_lm_head, nanstd  # noqa: E402

from tulu_lab import losses as L  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


# ------------------------------------------------------------------------------------ DPO


@pytest.fixture(scope="module")
def dpo_setup():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    policy, ref = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)
    pairs, seq = 3, 9
    ids = torch.randint(1, 32, (2 * pairs, seq))  # rows: 3 chosen, then their 3 rejected
    attention = torch.ones_like(ids)
    completion = torch.zeros_like(ids)
    # different prompt and response lengths, right padding, so sum and mean differ per row
    for row, (prompt_len, end) in enumerate(zip([3, 2, 4, 3, 2, 4], [9, 6, 8, 7, 9, 5])):
        completion[row, prompt_len:end] = 1
        attention[row, end:] = 0
        ids[row, end:] = 0
    inputs = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}
    return policy, ref, inputs, pairs


def trl_dpo(policy, ref, inputs, loss_type, beta):
    policy, ref = copy.deepcopy(policy), copy.deepcopy(ref)
    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(ref)
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = SimpleNamespace(
        model=policy, ref_model=ref, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=False, args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    loss = DPOTrainer._compute_loss(trainer, policy, dict(inputs), return_outputs=False)
    loss.backward()
    return loss, trainer._metrics["train"], policy


def our_dpo(policy, ref, inputs, pairs, loss_type, beta):
    policy = copy.deepcopy(policy)
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    labels = ids.masked_fill(inputs["completion_mask"] == 0, -100)
    logps, mask = L.sequence_logprobs(policy(input_ids=ids, attention_mask=attention).logits, labels)
    with torch.no_grad():
        ref_logps, _ = L.sequence_logprobs(ref(input_ids=ids, attention_mask=attention).logits, labels)
    summed, ref_summed, lengths = L.logprob_sum(logps, mask), L.logprob_sum(ref_logps, mask), mask.sum(-1)
    out = L.dpo_loss(summed[:pairs], summed[pairs:], ref_summed[:pairs], ref_summed[pairs:], beta,
                     loss_type=loss_type, chosen_lengths=lengths[:pairs], rejected_lengths=lengths[pairs:])
    out.loss.backward()
    return out, policy


@pytest.mark.parametrize("trl_type, our_type, beta", [("sigmoid", "dpo", 0.1), ("sigmoid_norm", "dpo_norm", 5.0)])
def test_dpo_matches_trl(dpo_setup, trl_type, our_type, beta):
    policy, ref, inputs, pairs = dpo_setup
    trl_loss, trl_metrics, trl_policy = trl_dpo(policy, ref, inputs, trl_type, beta)
    ours, our_policy = our_dpo(policy, ref, inputs, pairs, our_type, beta)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    assert abs(ours.loss.item() - 0.6931) > 1e-3  # policy != reference: a non-trivial value
    for ours_p, trl_p in zip(our_policy.parameters(), trl_policy.parameters()):
        torch.testing.assert_close(ours_p.grad, trl_p.grad, rtol=1e-4, atol=1e-6)
    if trl_type == "sigmoid":
        assert ours.chosen_rewards.mean().item() == pytest.approx(trl_metrics["rewards/chosen"][0], rel=1e-5)
        assert ours.margins.mean().item() == pytest.approx(trl_metrics["rewards/margins"][0], rel=1e-5)
        assert ours.accuracy.item() == pytest.approx(trl_metrics["rewards/accuracies"][0])


def test_dpo_norm_differs_from_plain_dpo(dpo_setup):
    """Guards the comparison above: the two TRL losses are really different on these inputs."""
    policy, ref, inputs, _ = dpo_setup
    plain, _, _ = trl_dpo(policy, ref, inputs, "sigmoid", 5.0)
    norm, _, _ = trl_dpo(policy, ref, inputs, "sigmoid_norm", 5.0)
    assert abs(plain.item() - norm.item()) > 1e-2


# ------------------------------------------------------------------------------------ GRPO

PROMPTS, GROUP, T = 2, 4, 6


@pytest.fixture(scope="module")
def grpo_inputs():
    torch.manual_seed(0)
    batch = PROMPTS * GROUP
    new = -torch.rand(batch, T) * 2
    old = new + 0.3 * torch.randn(batch, T)  # far enough from new that some ratios are clipped
    ref = new + 0.3 * torch.randn(batch, T)
    mask = torch.ones(batch, T, dtype=torch.long)
    for row, length in enumerate([6, 4, 5, 1, 6, 3, 2, 6]):
        mask[row, length:] = 0
    rewards = torch.tensor([10.0, 0.0, 0.0, 10.0, 10.0, 10.0, 0.0, 10.0])
    return new, old, ref, mask, rewards


def trl_group_advantages(rewards):
    grouped = rewards.view(-1, GROUP)
    mean = grouped.mean(dim=1).repeat_interleave(GROUP)
    std = nanstd(grouped, dim=1).repeat_interleave(GROUP)
    return (rewards - mean) / (std + 1e-4)


def test_group_advantages_match_trl_formula(grpo_inputs):
    rewards = grpo_inputs[4]
    torch.testing.assert_close(L.group_advantages(rewards, GROUP, eps=1e-4), trl_group_advantages(rewards))


def trl_grpo(new0, old, ref, mask, advantages, loss_type, beta):
    new = new0.clone().requires_grad_(True)
    accelerator = SimpleNamespace(reduce=lambda x, reduction: x, gather=lambda x: x, num_processes=1)
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (new, torch.zeros_like(new), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.2,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        use_vllm=False, vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False, max_completion_length=T,
        accelerator=accelerator, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    batch = new.size(0)
    inputs = {
        "prompt_ids": torch.zeros(batch, 3, dtype=torch.long), "prompt_mask": torch.ones(batch, 3, dtype=torch.long),
        "completion_ids": torch.zeros(batch, T, dtype=torch.long), "completion_mask": mask,
        "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return loss, new.grad, trainer._metrics["train"]


@pytest.mark.parametrize("trl_type, our_type", [("grpo", "grpo"), ("bnpo", "bnpo"), ("dr_grpo", "dr_grpo"),
                                                ("dapo", "bnpo")])
def test_grpo_loss_matches_trl(grpo_inputs, trl_type, our_type):
    new0, old, ref, mask, rewards = grpo_inputs
    advantages = L.group_advantages(rewards, GROUP, eps=1e-4)
    beta = 0.04
    trl_loss, trl_grad, trl_metrics = trl_grpo(new0, old, ref, mask, advantages, trl_type, beta)
    new = new0.clone().requires_grad_(True)
    ours = L.grpo_loss(new, old, ref, advantages, mask, beta, loss_type=our_type)
    ours.loss.backward()
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    torch.testing.assert_close(new.grad, trl_grad, rtol=1e-5, atol=1e-7)
    assert ours.kl.item() == pytest.approx(trl_metrics["kl"][0], rel=1e-5)
    assert ours.clip_fraction.item() == pytest.approx(trl_metrics["clip_ratio/region_mean"][0])
    assert 0 < ours.clip_fraction.item() < 1  # the inputs exercise both branches of the clip


def test_grpo_aggregations_differ_on_these_inputs(grpo_inputs):
    """Guards the comparison above: the loss types are distinguishable here."""
    new, old, ref, mask, rewards = grpo_inputs
    advantages = L.group_advantages(rewards, GROUP)
    values = {t: L.grpo_loss(new, old, ref, advantages, mask, 0.04, loss_type=t).loss.item()
              for t in L.GRPO_LOSS_TYPES}
    assert len({round(v, 6) for v in values.values()}) == len(values)
