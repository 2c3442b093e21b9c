"""RLVR loop on tiny models: forward passes, the update's invariances, errors, metrics, exact resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tulu_lab.config import LoraSettings, RLVRConfig
from tulu_lab.data.synthetic import generate_word_problems, rlvr_row
from tulu_lab.losses import grpo_loss, sequence_logprobs, whiten
from tulu_lab.rlvr import (
    RolloutBatch,
    World,
    _minibatch_rows,
    _pad_id,
    compute_advantages,
    evaluate_accuracy,
    forward_response,
    make_micro_batch,
    make_value_head,
    rlvr_update,
    rollout,
    score_rollout,
    train_rlvr,
    whiten_global,
)
from tulu_lab.training import make_optimizer, prepare_trainable

ROOT = Path(__file__).resolve().parents[1]
TIME_KEYS = {"step_time", "time/generate", "time/update"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine lose a lot to it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(tmp_path=None, **overrides) -> RLVRConfig:
    values = dict(output_dir=str(tmp_path or "runs/test-rlvr"), max_steps=2, max_new_tokens=6, prompts_per_step=2,
                  samples_per_prompt=4, per_device_batch=4, learning_rate=1e-3, precision="fp32",
                  lora=LoraSettings(r=4, alpha=8, dropout=0.0), checkpoint_every=0, eval_every=0)
    algorithm = overrides.pop("algorithm", "grpo")
    if algorithm == "ppo":
        values.update(samples_per_prompt=1, per_device_batch=2)
    values.update(overrides)
    return RLVRConfig.cpu_preset(algorithm=algorithm, **values)


def _rows(n=8, seed=3):
    return [rlvr_row(p) for p in generate_word_problems(n, seed=seed)]


@pytest.fixture()
def lora_model(tiny):
    """A fresh LoRA copy of the tiny model whose adapters are non-zero (policy != reference)."""
    model, tok = tiny
    cfg = _cfg()
    torch.manual_seed(0)
    peft_model = prepare_trainable(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return peft_model, tok


def _fixed_batch(vocab, n_rows=8, group=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    # one prompt per group of 4 rows (shared, as GRPO samples are); lengths differ between groups
    distinct = [torch.randint(2, vocab, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
                for _ in range((n_rows + 3) // 4)]
    prompts = [list(distinct[i // 4]) for i in range(n_rows)]
    responses = [torch.randint(2, vocab, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n_rows)]
    scores = torch.tensor([10.0, 0.0, -10.0])[torch.randint(0, 3, (n_rows,), generator=g)]
    scores[:group] = 0.0  # a group with no signal
    scores[group:2 * group] = torch.tensor([10.0, 0.0, 10.0, 0.0])[:group]
    return prompts, responses, scores


# ----------------------------------------------------------------------------------------------
# Forward passes
# ----------------------------------------------------------------------------------------------


def test_forward_response_matches_a_full_forward_pass(lora_model):
    model, _ = lora_model
    prompts, responses, _ = _fixed_batch(model.config.vocab_size)
    micro = make_micro_batch(prompts, responses, list(range(8)), pad_id=1)
    assert micro.prompt_ids.size(0) == 2  # each shared prompt is run once
    with torch.no_grad():
        out = forward_response(model, micro, temperature=0.7, with_entropy=True)
        for i in range(8):
            ids = torch.tensor([prompts[i] + responses[i]])
            labels = torch.tensor([[-100] * len(prompts[i]) + responses[i]])
            logits = model(input_ids=ids).logits
            ref, _ = sequence_logprobs(logits, labels, temperature=0.7)
            ref = ref[0, len(prompts[i]) - 1:]
            assert torch.allclose(out.logprobs[i, :len(responses[i])], ref, atol=1e-5)
            assert out.mask[i].sum() == len(responses[i])
            log_p = torch.log_softmax(logits[0, len(prompts[i]) - 1:-1] / 0.7, dim=-1)
            entropy = -(log_p.exp() * log_p).sum(-1)
            assert torch.allclose(out.entropy[i, :len(responses[i])], entropy, atol=1e-4)
    assert (out.entropy[~out.mask] == 0).all()
    # padding beyond each row's response is masked and zero
    assert (out.logprobs[~out.mask] == 0).all()


def test_score_pass_reference_is_the_adapter_free_network(lora_model, tiny):
    model, _ = lora_model
    base, _ = tiny
    prompts, responses, scores = _fixed_batch(model.config.vocab_size)
    batch = RolloutBatch(prompts, responses, scores, group_size=4)
    score_rollout(_cfg(algorithm="ppo", beta=0.1), model, batch, value_head=make_value_head(model))
    micro = make_micro_batch(prompts, responses, list(range(8)), pad_id=1)
    with torch.no_grad():
        expected_ref = forward_response(base, micro, 1.0).logprobs
        expected_policy = forward_response(model, micro, 1.0).logprobs
    mask = batch.response_mask
    assert torch.allclose(batch.ref_logprobs[mask], expected_ref[mask], atol=1e-5)
    assert torch.allclose(batch.old_logprobs[mask], expected_policy[mask], atol=1e-5)
    assert not torch.allclose(batch.old_logprobs[mask], batch.ref_logprobs[mask], atol=1e-3)
    assert (batch.old_values == 0).all()  # zero-initialised value head


def test_grpo_takes_the_rollout_log_probs_from_the_sampler(lora_model):
    """With several minibatches GRPO needs the rollout policy's log-probs: the sampler's are used (no
    policy pass, so no entropy from the score pass), and they equal a forward pass of the prompt + response."""
    from tulu_lab.generate import format_prompt

    model, tok = lora_model
    rows = _rows(2)
    cfg = _cfg(num_minibatches=2, per_device_batch=2, temperature=0.7)
    batch, _ = rollout(cfg, model, tok, rows, [format_prompt(r["messages"], tok) for r in rows], seed=0)
    sampled = batch.sampler_logprobs.clone()
    score_rollout(cfg, model, batch)
    assert batch.entropy is None
    assert torch.equal(batch.old_logprobs, sampled)
    micro = make_micro_batch(batch.prompt_ids, batch.response_ids, list(range(len(batch))), _pad_id(model))
    with torch.no_grad():
        expected = forward_response(model, micro, cfg.temperature).logprobs
    mask = batch.response_mask
    assert torch.allclose(batch.old_logprobs[mask], expected[mask], atol=1e-4)
    assert not torch.allclose(batch.old_logprobs[mask], forward_response(model, micro, 1.0).logprobs[mask].detach(),
                              atol=1e-3)  # the temperature matters: this comparison could fail


def test_minibatches_are_whole_groups_and_the_same_on_any_number_of_processes():
    cfg = _cfg(prompts_per_step=4, samples_per_prompt=4, per_device_batch=4, num_minibatches=2)
    scores = torch.zeros(16)
    one = _minibatch_rows(cfg, RolloutBatch([[1]] * 16, [[2]] * 16, scores, group_size=4), 0, 0, World())
    assert len(one) == 2 and sorted(one[0] + one[1]) == list(range(16))
    for part in one:  # each minibatch holds two complete groups
        assert len(part) == 8 and all(sum(r // 4 == g for r in part) in (0, 4) for g in range(4))
    assert one != _minibatch_rows(cfg, RolloutBatch([[1]] * 16, [[2]] * 16, scores, group_size=4), 1, 0, World())
    # two processes, 8 rows each: together they put the same rows in the same minibatches
    halves = [_minibatch_rows(cfg, RolloutBatch([[1]] * 8, [[2]] * 8, scores[:8], group_size=4, global_offset=8 * r),
                              0, 0, World(size=2, rank=r)) for r in range(2)]
    assert [sorted(halves[0][m] + [i + 8 for i in halves[1][m]]) for m in range(2)] == [sorted(p) for p in one]
    # three groups do not split into two minibatches evenly: single rows are drawn, 6 per minibatch
    cfg3 = _cfg(prompts_per_step=3, samples_per_prompt=4, per_device_batch=2, num_minibatches=2)
    rows3 = _minibatch_rows(cfg3, RolloutBatch([[1]] * 12, [[2]] * 12, torch.zeros(12), group_size=4), 0, 0, World())
    assert [len(p) for p in rows3] == [6, 6] and sorted(rows3[0] + rows3[1]) == list(range(12))


def test_beta_zero_scores_the_reference_only_to_log_kl(lora_model):
    """With LoRA the reference costs a forward pass with adapters off: done at beta 0 for the KL metric
    (track_kl), skipped when track_kl is off; the update is the same either way."""
    model, _ = lora_model
    prompts, responses, scores = _fixed_batch(model.config.vocab_size)
    results = {}
    for track in (True, False):
        batch = RolloutBatch(prompts, responses, scores.clone(), group_size=4)
        params, stats = _update(model, _cfg(beta=0.0, track_kl=track), batch)
        results[track] = (batch, params, stats)
    assert results[True][0].ref_logprobs is not None and results[False][0].ref_logprobs is None
    assert results[True][2].kl is not None and results[False][2].kl is None
    for tracked, untracked in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(tracked, untracked)


# ----------------------------------------------------------------------------------------------
# The update
# ----------------------------------------------------------------------------------------------


def _train_params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _update(model, cfg, batch):
    model = copy.deepcopy(model)
    params = _train_params(model)
    optimizer = make_optimizer(params, cfg)
    score_rollout(cfg, model, batch)
    compute_advantages(cfg, batch)
    stats = rlvr_update(cfg, model, optimizer, batch, params=params)
    return [p.detach().clone() for p in params], stats


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_grpo_update_equals_one_big_batch_computed_by_hand(lora_model, beta):
    """Micro-batching, bucketing and skipping zero-advantage groups change nothing: the update equals
    the textbook one (one padded batch, grpo_loss, backward, clip, AdamW step)."""
    model, _ = lora_model
    prompts, responses, scores = _fixed_batch(model.config.vocab_size)
    cfg = _cfg(beta=beta, per_device_batch=2)
    fast, stats = _update(model, cfg, RolloutBatch(prompts, responses, scores, group_size=4))
    assert stats.trained_sequences == (4 if beta == 0 else 8)  # beta 0: the all-zero group is skipped

    by_hand = copy.deepcopy(model)
    params = _train_params(by_hand)
    optimizer = make_optimizer(params, cfg)
    micro = make_micro_batch(prompts, responses, list(range(8)), pad_id=1)
    with torch.no_grad(), by_hand.disable_adapter():
        ref = forward_response(by_hand, micro, 1.0).logprobs
    by_hand.train()
    out = forward_response(by_hand, micro, 1.0)
    advantages = (scores.view(-1, 4) - scores.view(-1, 4).mean(1, keepdim=True)) / (
        scores.view(-1, 4).std(1, keepdim=True) + 1e-8)
    loss = grpo_loss(out.logprobs, out.logprobs.detach(), ref, advantages.reshape(-1), out.mask, beta).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    for a, b in zip(fast, params):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    assert abs(stats.loss - float(loss.detach())) < 1e-5


def test_update_does_not_depend_on_micro_batch_size(lora_model):
    model, _ = lora_model
    prompts, responses, scores = _fixed_batch(model.config.vocab_size)
    results = []
    for size in (1, 4, 8):
        cfg = _cfg(algorithm="ppo", beta=0.05, prompts_per_step=8, per_device_batch=size, ppo_epochs=2,
                   num_minibatches=2 if size < 8 else 1)
        value_head = make_value_head(model)
        m = copy.deepcopy(model)
        params = _train_params(m) + list(value_head.parameters())
        optimizer = make_optimizer(params, cfg)
        batch = RolloutBatch(prompts, responses, scores, group_size=1)
        score_rollout(cfg, m, batch, value_head=value_head)
        compute_advantages(cfg, batch)
        rlvr_update(cfg, m, optimizer, batch, value_head=value_head, params=params)
        results.append((size, cfg.num_minibatches, [p.detach().clone() for p in params]))
    (_, _, a), (_, _, b), _ = results
    for x, y in zip(a, b):  # same minibatches, different micro-batches: same result
        assert torch.allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_update_moves_probability_towards_high_reward(lora_model, algorithm):
    model, _ = lora_model
    prompts, responses, scores = _fixed_batch(model.config.vocab_size, seed=4)
    group = 4 if algorithm == "grpo" else 1
    scores = torch.tensor([10.0, 0.0, 10.0, 0.0] * 2)
    cfg = _cfg(algorithm=algorithm, beta=0.0, learning_rate=2e-3, prompts_per_step=8 // group)
    micro = make_micro_batch(prompts, responses, list(range(8)), pad_id=1)
    with torch.no_grad():
        before = forward_response(model, micro, 1.0)
    m = copy.deepcopy(model)
    value_head = make_value_head(m) if algorithm == "ppo" else None
    params = _train_params(m) + (list(value_head.parameters()) if value_head else [])
    optimizer = make_optimizer(params, cfg)
    for _ in range(3):
        batch = RolloutBatch(prompts, responses, scores, group_size=group)
        score_rollout(cfg, m, batch, value_head=value_head)
        compute_advantages(cfg, batch)
        rlvr_update(cfg, m, optimizer, batch, value_head=value_head, params=params)
    with torch.no_grad():
        after = forward_response(m, micro, 1.0)
    change = ((after.logprobs - before.logprobs) * before.mask).sum(-1)
    good, bad = scores > 0, scores <= 0
    assert change[good].mean() > 0 > change[bad].mean()


def test_ppo_value_head_learns_the_returns(lora_model):
    model, _ = lora_model
    prompts, responses, scores = _fixed_batch(model.config.vocab_size)
    # the value model trains its own adapters too: 1e-2 makes their steps overshoot
    cfg = _cfg(algorithm="ppo", prompts_per_step=8, learning_rate=5e-3, ppo_epochs=4)
    m = copy.deepcopy(model)
    value_head = make_value_head(m)
    params = _train_params(m) + list(value_head.parameters())
    optimizer = make_optimizer(params, cfg)
    losses = []
    for _ in range(6):
        batch = RolloutBatch(prompts, responses, scores, group_size=1)
        score_rollout(cfg, m, batch, value_head=value_head)
        compute_advantages(cfg, batch)
        losses.append(rlvr_update(cfg, m, optimizer, batch, value_head=value_head, params=params).value_loss)
    assert all(a > b for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0]


# ----------------------------------------------------------------------------------------------
# PPO's value model is apart from the policy
# ----------------------------------------------------------------------------------------------


def _policy_grads(model, value_head, micro, value_weight: float):
    """Gradients of the policy's trainable parameters for policy loss + value_weight * value loss."""
    out = forward_response(model, micro, 1.0, value_head=value_head)
    policy_loss = -(out.logprobs * out.mask).sum()
    value_loss = ((out.values - 3.0) ** 2 * out.mask).sum()
    params = _train_params(model)
    return torch.autograd.grad(policy_loss + value_weight * value_loss, params, allow_unused=True)


def _nonzero_head(value_head):
    with torch.no_grad():  # a zero head passes no gradient to the trunk; make it pass some
        head = value_head.head if hasattr(value_head, "head") else value_head
        head.weight.normal_(0.0, 0.5)
    return value_head


def test_value_loss_leaves_the_policy_gradients_unchanged(lora_model):
    model, _ = lora_model
    prompts, responses, _ = _fixed_batch(model.config.vocab_size)
    micro = make_micro_batch(prompts, responses, list(range(8)), pad_id=1)
    value = _nonzero_head(make_value_head(model))
    alone = _policy_grads(model, value, micro, 0.0)
    with_value = _policy_grads(model, value, micro, 1.0)
    for a, b in zip(alone, with_value):
        assert (a is None and b is None) or torch.equal(a, b)
    # the value loss does train the value model's own adapters and head
    out = forward_response(model, micro, 1.0, value_head=value)
    grads = torch.autograd.grad(((out.values - 3.0) ** 2 * out.mask).sum(), list(value.parameters()),
                                allow_unused=True)
    named = dict(zip([n for n, _ in value.named_parameters()], grads))
    assert any(g is not None and g.abs().sum() > 0 for n, g in named.items() if "lora_" in n)
    assert named["head.weight"].abs().sum() > 0
    # it shares the policy's frozen weights (held once) but none of its trainable ones
    policy_ids = {id(p) for p in model.parameters()}
    assert not policy_ids & {id(p) for p in value.parameters()}
    assert any(id(p) in policy_ids for p in value.trunk.parameters() if not p.requires_grad) or all(
        p.requires_grad for p in model.parameters())
    # the check fails for a value head on the policy's own trunk
    shared = _nonzero_head(torch.nn.Linear(model.config.hidden_size, 1))
    a, b = _policy_grads(model, shared, micro, 0.0), _policy_grads(model, shared, micro, 1.0)
    assert any(not torch.equal(x, y) for x, y in zip(a, b) if x is not None)


def test_ppo_policy_update_does_not_depend_on_the_value_loss(lora_model):
    """Separate losses and separate gradient clips: the policy after an update is the same whatever
    vf_coef is (with one shared clip, the value gradient would rescale the policy's step)."""
    model, _ = lora_model
    prompts, responses, scores = _fixed_batch(model.config.vocab_size)
    results = []
    for vf_coef in (0.0, 10.0):
        cfg = _cfg(algorithm="ppo", beta=0.05, prompts_per_step=8, vf_coef=vf_coef, grad_clip=0.01)
        m = copy.deepcopy(model)
        torch.manual_seed(5)  # the same value head in both runs: the values feed the advantages
        value = _nonzero_head(make_value_head(m))
        params = _train_params(m) + list(value.parameters())
        optimizer = make_optimizer(params, cfg)
        batch = RolloutBatch(prompts, responses, scores, group_size=1)
        score_rollout(cfg, m, batch, value_head=value)
        compute_advantages(cfg, batch)
        rlvr_update(cfg, m, optimizer, batch, value_head=value, params=params)
        results.append(([p.detach().clone() for p in _train_params(m)], [p.detach().clone() for p in value.parameters()]))
    (policy_a, value_a), (policy_b, value_b) = results
    assert all(torch.equal(x, y) for x, y in zip(policy_a, policy_b))
    assert any(not torch.equal(x, y) for x, y in zip(value_a, value_b))


def test_value_model_checkpoint_holds_only_what_it_trains(lora_model, tmp_path):
    from safetensors.torch import load_file, save_file

    model, _ = lora_model
    value = make_value_head(model)
    state = value.state_dict()
    assert set(state) == {n for n, _ in value.named_parameters()} and "head.weight" in state
    assert all("lora_" in n or n.startswith("head.") for n in state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "v.safetensors"))
    other = _nonzero_head(make_value_head(model))
    other.load_state_dict(load_file(str(tmp_path / "v.safetensors")))
    assert all(torch.equal(a, b) for a, b in zip(value.parameters(), other.parameters()))


# ----------------------------------------------------------------------------------------------
# Settings that reach the computation: kl_estimator, advantage_scale, loss_aggregation
# ----------------------------------------------------------------------------------------------


def test_ppo_kl_estimator_drives_the_reward_and_the_log(lora_model):
    from tulu_lab.losses import kl_estimate
    from tulu_lab.rlvr import _step_record, UpdateStats

    model, _ = lora_model
    prompts, responses, scores = _fixed_batch(model.config.vocab_size)
    returns = {}
    for estimator in ("k1", "k3"):
        cfg = _cfg(algorithm="ppo", beta=0.5, prompts_per_step=8, kl_estimator=estimator)
        batch = RolloutBatch(prompts, responses, scores, group_size=1)
        score_rollout(cfg, model, batch, value_head=make_value_head(model))
        compute_advantages(cfg, batch)
        mask = batch.response_mask
        kl = kl_estimate(batch.old_logprobs, batch.ref_logprobs, estimator) * mask
        # with zero values and gamma 1, lambda 0.95: the return at token 0 is the discounted reward sum;
        # at the last token it is that token's reward: -beta * kl + score
        last = mask.sum(1) - 1
        rows = torch.arange(len(batch))
        assert torch.allclose(batch.returns[rows, last], -0.5 * kl[rows, last] + scores, atol=1e-5)
        returns[estimator] = batch.returns
        stats = UpdateStats(0.0, 0.0, 0.0, 0.0, 0.0, None, None, 8, [])
        info = {"lengths": [len(r) for r in responses], "correct": [False] * 8, "stopped": [True] * 8}
        record = _step_record(cfg, 0, batch, info, stats, World(), 1e-3)
        assert record["kl"] == pytest.approx(float(kl.sum() / mask.sum()), rel=1e-5)
    assert not torch.allclose(returns["k1"], returns["k3"])


def test_advantage_scale_is_reachable_from_the_config():
    scores = torch.tensor([10.0, 0.0, 0.0, 0.0, 10.0, 10.0, 0.0, 0.0])
    out = {}
    for scale in ("std", "none"):
        batch = RolloutBatch([[1]] * 8, [[2]] * 8, scores.clone(), group_size=4)
        out[scale] = compute_advantages(_cfg(advantage_scale=scale), batch).advantages
    assert torch.allclose(out["none"], torch.tensor([7.5, -2.5, -2.5, -2.5, 5.0, 5.0, -5.0, -5.0]))
    assert torch.allclose(out["std"][4:], out["none"][4:] / scores[4:].std())


def test_open_instruct_aggregation_depends_on_the_micro_batches_and_the_others_do_not(lora_model):
    model, _ = lora_model
    prompts, responses, scores = _fixed_batch(model.config.vocab_size)
    scores[:4] = torch.tensor([10.0, 0.0, 0.0, 10.0])
    for aggregation, invariant in (("sequence_mean", True), ("constant", True), ("micro_batch_mean", False)):
        results = []
        for size in (1, 4):
            cfg = _cfg(beta=0.0, per_device_batch=size, loss_aggregation=aggregation)
            params, _ = _update(model, cfg, RolloutBatch(prompts, responses, scores.clone(), group_size=4))
            results.append(params)
        same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*results))
        assert same == invariant, aggregation
    # micro_batch_mean at one sequence per micro-batch is sequence_mean
    one = [_update(model, _cfg(beta=0.0, per_device_batch=1, loss_aggregation=name),
                   RolloutBatch(prompts, responses, scores.clone(), group_size=4))[0]
           for name in ("micro_batch_mean", "sequence_mean")]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*one))


def test_global_whitening_equals_whitening_on_one_process():
    x, mask = torch.randn(4, 6), torch.rand(4, 6) > 0.3
    assert torch.allclose(whiten_global(x, mask, World()), whiten(x, mask))


# ----------------------------------------------------------------------------------------------
# Rewards and evaluation
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def eos_model(tiny):
    """The tiny model with EOS boosted so that every response stops at once (as in test_generate)."""
    model, tok = tiny
    m = copy.deepcopy(model)
    head = m.get_output_embeddings()
    with torch.no_grad():
        head.weight[tok.eos_token_id] = m.model.norm.weight.sign() * 5
    return m, tok


def test_reward_model_score_is_added_and_non_stop_replaces(eos_model, tiny):
    rows = _rows(2)
    texts = [r["messages"] for r in rows]
    from tulu_lab.generate import format_prompt

    for model, tok, stops in ((eos_model[0], eos_model[1], True), (tiny[0], tiny[1], False)):
        cfg = _cfg(reward_model_weight=0.5, max_new_tokens=3)
        batch, info = rollout(cfg, model, tok, rows, [format_prompt(t, tok) for t in texts], seed=0,
                              reward_model=lambda p, r: [3.0] * len(r))
        assert all(s == stops for s in info["stopped"])
        expected = 1.5 if stops else cfg.non_stop_penalty  # an empty answer is wrong: 0 + 0.5 * 3
        assert torch.allclose(batch.scores, torch.full((8,), float(expected)))


def test_evaluate_accuracy_matches_the_verifier(tiny):
    from tulu_lab.generate import generate
    from tulu_lab.rewards import verify

    model, tok = tiny
    rows = _rows(4)
    accuracy, correct = evaluate_accuracy(model, tok, rows, max_new_tokens=8, batch_size=2)
    texts = [g.text for g in generate(model, tok, [r["messages"] for r in rows], max_new_tokens=8)]
    assert correct == [verify("gsm8k", t, r["ground_truth"]) for t, r in zip(texts, rows)]
    # a row whose ground truth is what the greedy answer ends with is counted correct
    numbers = [w for w in texts[0].replace(".", " ").split() if w.isdigit()]
    if numbers:
        row = dict(rows[0], ground_truth=numbers[-1])
        assert evaluate_accuracy(model, tok, [row], max_new_tokens=8)[1] == [True]
    assert accuracy == sum(correct) / 4


# ----------------------------------------------------------------------------------------------
# train_rlvr
# ----------------------------------------------------------------------------------------------


def test_impossible_configs_and_bad_data_are_refused(tiny, tmp_path):
    model, tok = tiny
    rows = _rows(4)
    with pytest.raises(ValueError, match="learning_rate"):
        _cfg(tmp_path, learning_rate=0.0)
    with pytest.raises(ValueError, match="divisible"):
        _cfg(tmp_path, prompts_per_step=3, samples_per_prompt=3, per_device_batch=2)
    with pytest.raises(ValueError, match="grpo_loss_type"):
        _cfg(tmp_path, grpo_loss_type="reinforce")
    with pytest.raises(ValueError, match="samples_per_prompt"):
        _cfg(tmp_path, samples_per_prompt=1)
    cfg = _cfg(tmp_path)
    cfg.grpo_loss_type = "reinforce"  # set after validation: train_rlvr validates again
    with pytest.raises(ValueError, match="grpo_loss_type"):
        train_rlvr(cfg, model, tok, rows, progress=False)
    with pytest.raises(ValueError, match="data is empty"):
        train_rlvr(_cfg(tmp_path), model, tok, [], progress=False)
    with pytest.raises(ValueError, match=r"data\[1\]: missing field\(s\) \['ground_truth'\]"):
        train_rlvr(_cfg(tmp_path), model, tok, [rows[0], {"messages": rows[1]["messages"], "dataset": "gsm8k"}],
                   progress=False)
    with pytest.raises(ValueError, match=r"data\[0\].dataset: 'chess'"):
        train_rlvr(_cfg(tmp_path), model, tok, [dict(rows[0], dataset="chess")], progress=False)
    with pytest.raises(ValueError, match=r"eval_data\[0\]"):
        train_rlvr(_cfg(tmp_path), model, tok, rows, eval_data=[{}], progress=False)
    with pytest.raises(ValueError, match="reward_model_weight is 0"):
        train_rlvr(_cfg(tmp_path), model, tok, rows, reward_model=lambda p, r: [0.0] * len(r), progress=False)
    with pytest.raises(ValueError, match="no reward_model"):
        train_rlvr(_cfg(tmp_path, reward_model_weight=1.0), model, tok, rows, progress=False)
    with pytest.raises(ValueError, match="num_processes"):
        train_rlvr(_cfg(tmp_path, num_processes=2), model, tok, rows, progress=False)
    with pytest.raises(ValueError, match="max_prompt_len"):
        train_rlvr(_cfg(tmp_path, max_prompt_len=5), model, tok, rows, progress=False)
    assert not hasattr(model, "peft_config")  # refused before any adapter was attached


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_train_rlvr_logs_trl_metrics_and_saves(tiny, tmp_path, algorithm):
    model, tok = tiny
    cfg = _cfg(tmp_path, algorithm=algorithm, max_steps=2, eval_every=2, checkpoint_every=1)
    result = train_rlvr(cfg, copy.deepcopy(model), tok, _rows(6), eval_data=_rows(3, seed=9), progress=False,
                        save_merged=False)
    metrics = [json.loads(line) for line in cfg.metrics_path.read_text().splitlines()]
    assert metrics == result["metrics"] and [m["step"] for m in metrics] == [1, 2]
    expected = {"reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio",
                "frac_reward_zero_std", "clip_ratio", "step_time", "accuracy", "learning_rate", "loss",
                "episodes", "step"}
    assert expected <= set(metrics[0])
    assert [m["episodes"] for m in metrics] == [cfg.rollout_batch, 2 * cfg.rollout_batch]
    assert "eval/accuracy" in metrics[1] and result["eval_accuracy"] == metrics[1]["eval/accuracy"]
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # fresh adapters: policy == reference
    assert metrics[0]["learning_rate"] > metrics[1]["learning_rate"]  # linear decay
    final = Path(result["final_dir"])
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    if algorithm == "ppo":
        assert (final / "value_head.safetensors").is_file()
        assert (tmp_path / "checkpoint-2" / "value_head.safetensors").is_file()
        assert "value_loss" in metrics[0]


def test_beta_zero_skips_groups_without_signal(tiny, tmp_path):
    """A random tiny model never stops within 6 tokens: every group scores -10 everywhere, so with
    beta 0 nothing is trained (no backward pass), with beta > 0 everything is."""
    model, tok = tiny
    for beta, trained in ((0.0, 0), (0.05, 8)):
        cfg = _cfg(tmp_path / str(beta), beta=beta, max_steps=1)
        result = train_rlvr(cfg, copy.deepcopy(model), tok, _rows(4), progress=False, save_merged=False)
        record = result["final"]
        assert record["frac_reward_zero_std"] == 1.0 and record["trained_sequences"] == trained


def test_grpo_with_minibatches_logs_kl_and_entropy_without_a_policy_pass(tiny, tmp_path):
    """Two minibatches per rollout: two optimiser steps, the KL over every sequence from the sampler's
    log-probs, the entropy from the training forward."""
    model, tok = tiny
    cfg = _cfg(tmp_path, beta=0.04, max_steps=1, num_minibatches=2, per_device_batch=2)
    record = train_rlvr(cfg, copy.deepcopy(model), tok, _rows(4), progress=False, save_merged=False)["final"]
    assert record["kl"] is not None and abs(record["kl"]) < 1e-3  # adapters start at zero: policy == reference
    assert record["entropy"] is not None and record["entropy"] > 0
    assert record["trained_sequences"] == cfg.rollout_batch


def _strip_times(records):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def test_grpo_resume_after_a_crash_equals_an_uninterrupted_run(tiny, tmp_path):
    model, tok = tiny
    rows = _rows(8)
    kw = dict(max_steps=4, checkpoint_every=2, reward_model_weight=0.5, lora=LoraSettings(r=4, alpha=8))
    rm = lambda prompts, responses: [0.1 * len(r) for r in responses]  # noqa: E731
    whole = train_rlvr(_cfg(tmp_path / "a", **kw), copy.deepcopy(model), tok, rows, reward_model=rm,
                       progress=False, save_merged=False)

    calls = {"n": 0}

    def crashing_rm(prompts, responses):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash in step 4")
        return rm(prompts, responses)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_rlvr(_cfg(tmp_path / "b", **kw), copy.deepcopy(model), tok, rows, reward_model=crashing_rm,
                   progress=False, save_merged=False)
    resumed = train_rlvr(_cfg(tmp_path / "b", **kw), copy.deepcopy(model), tok, rows, reward_model=rm,
                         progress=False, save_merged=False)
    assert _strip_times(resumed["metrics"]) == _strip_times(whole["metrics"])
    assert len(resumed["metrics"]) == 4


def test_time_limit_stops_early_with_a_checkpoint_and_a_later_call_continues(tiny, tmp_path):
    model, tok = tiny
    rows = _rows(8)
    cfg = _cfg(tmp_path / "limited", max_steps=3, lr_schedule="constant")
    first = train_rlvr(cfg, copy.deepcopy(model), tok, rows, progress=False, save_merged=False, time_limit_s=0.0)
    assert first["steps"] == 1 and first["stopped_early"] and (tmp_path / "limited" / "checkpoint-1").is_dir()
    rest = train_rlvr(cfg, copy.deepcopy(model), tok, rows, progress=False, save_merged=False)
    assert rest["steps"] == 3 and not rest["stopped_early"]
    whole = train_rlvr(_cfg(tmp_path / "whole", max_steps=3, lr_schedule="constant"), copy.deepcopy(model), tok,
                       rows, progress=False, save_merged=False)
    assert _strip_times(rest["metrics"]) == _strip_times(whole["metrics"])


@pytest.mark.slow
def test_ppo_run_killed_with_sigkill_resumes_to_the_same_metrics(tiny_model_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import rlvr_resume_script as script
    finally:
        sys.path.pop(0)
    threads = torch.get_num_threads()
    try:
        whole = script.run(str(tiny_model_dir), str(tmp_path / "whole"))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        killed = subprocess.run([sys.executable, str(ROOT / "tests" / "rlvr_resume_script.py"), str(tiny_model_dir),
                                 str(tmp_path / "killed"), "4"], env=env, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -9, killed.stderr[-2000:]
        lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 3  # steps 1-3 logged, killed inside step 4; checkpoint at step 2
        assert (tmp_path / "killed" / "checkpoint-2").is_dir()
        resumed = script.run(str(tiny_model_dir), str(tmp_path / "killed"))
    finally:
        torch.set_num_threads(threads)
    assert _strip_times(resumed["metrics"]) == _strip_times(whole["metrics"])
    assert [m["step"] for m in resumed["metrics"]] == [1, 2, 3, 4, 5]
