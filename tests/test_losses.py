"""Hand-worked checks of tulu_lab.losses on tensors small enough to compute on paper.

Every expected value is built from scalars with the math module (log, exp, sigmoid), written out
step by step, so a test fails if the function's formula, shift, mask or reduction is wrong.
"""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tulu_lab import losses as L


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def assert_table(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual.float(), torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def log_softmax_at(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(v) for v in row))


# ------------------------------------------------------------------------------------ SFT


# One sequence, vocabulary of 3, four positions. labels: position 0 is the prompt (-100),
# so targets after the shift are labels[1:] = [-100, 2, 0]: position 1 predicts token 2,
# position 2 predicts token 0; position 0's prediction (of label -100) is ignored.
LOGITS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 2.0], [3.0, 0.0, 1.0], [9.0, 9.0, 9.0]]])
LABELS = torch.tensor([[-100, -100, 2, 0]])


def test_sft_loss_sum_and_mean_by_hand():
    nll_1 = -log_softmax_at([0.0, 1.0, 2.0], 2)  # logits[1] scores labels[2] = 2
    nll_2 = -log_softmax_at([3.0, 0.0, 1.0], 0)  # logits[2] scores labels[3] = 0
    loss_sum, n = L.sft_loss(LOGITS, LABELS, reduction="sum")
    assert n.item() == 2
    assert loss_sum.item() == pytest.approx(nll_1 + nll_2, rel=1e-6)
    loss_mean, n = L.sft_loss(LOGITS, LABELS, reduction="mean")
    assert loss_mean.item() == pytest.approx((nll_1 + nll_2) / 2, rel=1e-6)


def test_sft_sum_is_invariant_to_how_the_batch_is_split():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 5)
    labels = torch.randint(0, 5, (4, 6))
    labels[0, :4] = -100  # uneven lengths make mean-of-means differ from the token mean
    labels[2, :2] = -100
    whole, n_whole = L.sft_loss(logits, labels, "sum")
    a, na = L.sft_loss(logits[:2], labels[:2], "sum")
    b, nb = L.sft_loss(logits[2:], labels[2:], "sum")
    assert (a + b).item() == pytest.approx(whole.item(), rel=1e-6)
    assert (na + nb).item() == n_whole.item()
    # "mean" per micro-batch, then averaged, is NOT the token mean: the reason Tülu 3 sums
    ma, _ = L.sft_loss(logits[:2], labels[:2], "mean")
    mb, _ = L.sft_loss(logits[2:], labels[2:], "mean")
    assert ((ma + mb) / 2).item() != pytest.approx((whole / n_whole).item(), rel=1e-4)


def test_sft_all_masked_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    labels = torch.full((2, 4), -100)
    for reduction in ("sum", "mean"):
        loss, n = L.sft_loss(logits, labels, reduction)
        assert n.item() == 0 and loss.item() == 0.0
        loss.backward()
        assert torch.all(logits.grad == 0)


def test_sft_gradient_only_reaches_scored_positions():
    logits = LOGITS.clone().requires_grad_(True)
    loss, _ = L.sft_loss(logits, LABELS)
    loss.backward()
    assert torch.all(logits.grad[0, 0] == 0)  # predicts a masked label
    assert torch.all(logits.grad[0, 3] == 0)  # last position predicts nothing
    assert logits.grad[0, 1].abs().sum() > 0 and logits.grad[0, 2].abs().sum() > 0


def test_sft_rejects_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        L.sft_loss(LOGITS, LABELS, reduction="avg")


# ------------------------------------------------------------------------------------ log-probs


def test_sequence_logprobs_shift_mask_and_reductions():
    logps, mask = L.sequence_logprobs(LOGITS, LABELS)
    assert logps.shape == (1, 3) and mask.tolist() == [[False, True, True]]
    lp1 = log_softmax_at([0.0, 1.0, 2.0], 2)
    lp2 = log_softmax_at([3.0, 0.0, 1.0], 0)
    assert logps[0, 0].item() == 0.0
    assert logps[0, 1].item() == pytest.approx(lp1, rel=1e-6)
    assert logps[0, 2].item() == pytest.approx(lp2, rel=1e-6)
    assert L.logprob_sum(logps, mask).item() == pytest.approx(lp1 + lp2, rel=1e-6)
    assert L.logprob_mean(logps, mask).item() == pytest.approx((lp1 + lp2) / 2, rel=1e-6)


def test_sequence_logprobs_divides_by_temperature():
    logps, _ = L.sequence_logprobs(LOGITS, LABELS, temperature=2.0)
    assert logps[0, 1].item() == pytest.approx(log_softmax_at([0.0, 0.5, 1.0], 2), rel=1e-6)


def test_sequence_logprobs_agree_with_sft_loss():
    torch.manual_seed(1)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[:, :3] = -100
    logps, mask = L.sequence_logprobs(logits, labels)
    loss, _ = L.sft_loss(logits, labels, "sum")
    assert (-L.logprob_sum(logps, mask).sum()).item() == pytest.approx(loss.item(), rel=1e-5)


def test_logprob_mean_of_empty_row_is_zero():
    logps = torch.tensor([[-1.0, -2.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [False, False]])
    assert L.logprob_mean(logps, mask).tolist() == [-1.5, 0.0]


# ------------------------------------------------------------------------------------ DPO


def test_dpo_by_hand():
    beta = 0.1
    pc, pr, rc, rr = -10.0, -14.0, -11.0, -12.0
    # h = (pc - rc) - (pr - rr) = 1 - (-2) = 3 ; loss = -logsigmoid(0.3)
    out = L.dpo_loss(torch.tensor([pc]), torch.tensor([pr]), torch.tensor([rc]), torch.tensor([rr]),
                     beta, loss_type="dpo")
    assert out.loss.item() == pytest.approx(-logsigmoid(0.3), rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.1 * 1.0)
    assert out.rejected_rewards.item() == pytest.approx(0.1 * -2.0)
    assert out.margins.item() == pytest.approx(0.3)
    assert out.accuracy.item() == 1.0


def test_dpo_norm_by_hand_uses_per_token_means():
    beta = 5.0
    # chosen: 4 tokens, summed logps policy -8, ref -10 -> mean log-ratio (−8+10)/4 = 0.5
    # rejected: 2 tokens, summed logps policy -6, ref -5 -> mean log-ratio (−6+5)/2 = -0.5
    out = L.dpo_loss(torch.tensor([-8.0]), torch.tensor([-6.0]), torch.tensor([-10.0]), torch.tensor([-5.0]),
                     beta, loss_type="dpo_norm",
                     chosen_lengths=torch.tensor([4]), rejected_lengths=torch.tensor([2]))
    margin = 5.0 * (0.5 - (-0.5))
    assert out.loss.item() == pytest.approx(-logsigmoid(margin), rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(2.5)
    assert out.rejected_rewards.item() == pytest.approx(-2.5)


def test_dpo_batch_mean_accuracy_and_gradient_direction():
    pc = torch.tensor([-5.0, -9.0], requires_grad=True)
    pr = torch.tensor([-7.0, -6.0], requires_grad=True)
    ref = torch.tensor([-6.0, -6.0])
    out = L.dpo_loss(pc, pr, ref, ref, 1.0, loss_type="dpo")
    # pair 0: h = 1 - (-1) = 2 ; pair 1: h = -3 - 0 = -3
    expected = (-logsigmoid(2.0) - logsigmoid(-3.0)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.accuracy.item() == 0.5
    out.loss.backward()
    # minimising raises the chosen log-prob and lowers the rejected one
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)
    assert not out.margins.requires_grad


def test_dpo_at_equal_policy_and_reference_is_log2():
    x = torch.tensor([-3.0, -4.0])
    out = L.dpo_loss(x, x, x, x, 5.0, loss_type="dpo_norm", chosen_lengths=torch.tensor([3, 4]),
                     rejected_lengths=torch.tensor([3, 4]))
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_dpo_rejects_bad_arguments():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="allowed"):
        L.dpo_loss(x, x, x, x, 0.1, loss_type="ipo")
    with pytest.raises(ValueError, match="chosen_lengths"):
        L.dpo_loss(x, x, x, x, 5.0, loss_type="dpo_norm")
    with pytest.raises(ValueError, match="beta"):
        L.dpo_loss(x, x, x, x, 0.0, loss_type="dpo")
    with pytest.raises(ValueError, match="one shape"):
        L.dpo_loss(x, torch.zeros(3), x, x, 0.1, loss_type="dpo")


# ------------------------------------------------------------------------------------ RLVR scores


def test_verifiable_score_rules():
    correct = torch.tensor([True, False, True, False])
    stopped = torch.tensor([True, True, False, False])
    assert L.verifiable_score(correct, stopped).tolist() == [10.0, 0.0, -10.0, -10.0]
    base = torch.tensor([0.5, 0.25, 3.0, 3.0])
    assert L.verifiable_score(correct, stopped, base_score=base).tolist() == [10.5, 0.25, -10.0, -10.0]


def test_per_token_rewards_puts_score_on_last_real_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    score = torch.tensor([10.0, -10.0])
    beta = 0.1
    r = L.per_token_rewards(score, logp, ref, mask, beta)
    # row 0: -0.1 * [0.5, -1, 0] + [0, 0, 10]; row 1: -0.1 * [1, 0, (pad)] + [0, -10, 0]
    assert_table(r, [[-0.05, 0.1, 10.0], [-0.1, -10.0, 0.0]])


def test_per_token_rewards_rejects_an_empty_response():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        L.per_token_rewards(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3),
                            torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.05)


# ------------------------------------------------------------------------------------ GAE, whiten


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])  # 9.0 sits on padding and must be ignored
    mask = torch.tensor([[1, 1, 1, 0]])
    gamma, lam = 0.9, 0.5
    d2 = 1.0 + gamma * 0.0 - 0.3
    d1 = 0.0 + gamma * 0.3 - 0.4
    d0 = 0.0 + gamma * 0.4 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = L.gae(rewards, values, mask, gamma, lam)
    assert_table(adv, [[a0, a1, a2, 0.0]])
    assert_table(ret, [[a0 + 0.5, a1 + 0.4, a2 + 0.3, 0.0]])


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 5.0]])
    values = torch.tensor([[1.0, 2.0, 3.0]])
    adv, ret = L.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert_table(ret, [[4.9, 4.8, 5.0]])
    assert_table(adv, [[3.9, 2.8, 2.0]])


def test_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, unbiased var ((1)+(0)+(1))/2 = 1
    out = L.whiten(x, mask, eps=0.0)
    assert_table(out, [[-1.0, 0.0, 1.0, 0.0]])
    kept = L.whiten(x, mask, shift_mean=False, eps=0.0)
    assert_table(kept, [[1.0, 2.0, 3.0, 0.0]])


def test_whiten_degenerate_masks_are_finite():
    assert L.whiten(torch.tensor([[4.0, 5.0]]), torch.tensor([[0, 0]])).tolist() == [[0.0, 0.0]]
    assert L.whiten(torch.tensor([[4.0, 5.0]]), torch.tensor([[1, 0]])).tolist() == [[0.0, 0.0]]


# ------------------------------------------------------------------------------------ PPO


def test_ppo_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1)]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1, 1, 1]])
    # token 0: A>0, rho 1.5 -> max(-1.5, -1.2) = -1.2 (clipped)
    # token 1: A>0, rho 0.5 -> max(-0.5, -0.8) = -0.5 (unclipped)
    # token 2: A<0, rho 1.1 -> max(2.2, 2.2) = 2.2 (inside the range)
    out = L.ppo_policy_loss(new, old, adv, mask, clip=0.2)
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3, rel=1e-6)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)
    expected_kl = (0.5 * math.log(1.5) ** 2 + 0.5 * math.log(0.5) ** 2 + 0.5 * math.log(1.1) ** 2) / 3
    assert out.approx_kl.item() == pytest.approx(expected_kl, rel=1e-6)
    out.loss.backward()
    # the clipped token gets no gradient; d/dlogp of -A*rho at token 1 is -A*rho/3 = -0.5/3
    assert new.grad[0, 0].item() == 0.0
    assert new.grad[0, 1].item() == pytest.approx(-0.5 / 3, rel=1e-6)
    assert new.grad[0, 2].item() == pytest.approx(2.2 / 3, rel=1e-6)


def test_ppo_policy_loss_ignores_masked_tokens_and_accepts_sequence_advantages():
    new = torch.tensor([[0.1, 0.2, 50.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1, 1, 0]])
    a = L.ppo_policy_loss(new, old, torch.tensor([2.0]), mask)
    b = L.ppo_policy_loss(new[:, :2], old[:, :2], torch.tensor([[2.0, 2.0]]), mask[:, :2])
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)


def test_ppo_value_loss_by_hand():
    old_v = torch.tensor([[1.0, 1.0]])
    v = torch.tensor([[2.0, 1.1]], requires_grad=True)
    ret = torch.tensor([[3.0, 0.0]])
    # token 0: unclipped (2-3)^2 = 1, clipped v 1.2 -> (1.2-3)^2 = 3.24 -> max 3.24 (clipped wins)
    # token 1: unclipped (1.1-0)^2 = 1.21, clipped v 1.1 (inside) -> 1.21
    out = L.ppo_value_loss(v, old_v, ret, torch.ones(1, 2), clip=0.2)
    assert out.loss.item() == pytest.approx(0.5 * (3.24 + 1.21) / 2, rel=1e-6)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    out.loss.backward()
    assert v.grad[0, 0].item() == 0.0  # the clipped branch is constant in v
    assert v.grad[0, 1].item() == pytest.approx(0.5 * 2 * 1.1 / 2, rel=1e-6)


def test_all_masked_rl_losses_are_zero():
    z = torch.zeros(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3)
    assert L.ppo_policy_loss(z, z, torch.ones(2), mask).loss.item() == 0.0
    assert L.ppo_value_loss(z, z, torch.ones(2, 3), mask).loss.item() == 0.0
    for loss_type in L.GRPO_LOSS_TYPES:
        out = L.grpo_loss(z, z.detach(), z.detach() - 1, torch.ones(2), mask, beta=0.1, loss_type=loss_type)
        assert out.loss.item() == 0.0
        out.loss.backward()
        assert torch.all(z.grad == 0)


# ------------------------------------------------------------------------------------ GRPO


def test_group_advantages_by_hand_sample_std():
    rewards = torch.tensor([10.0, 0.0, 0.0, 10.0, 0.0, 0.0])  # two groups of three
    adv = L.group_advantages(rewards, group_size=3, eps=0.0)
    # group 0: mean 10/3; deviations 20/3, -10/3, -10/3; sample var = (400+100+100)/9/2 = 100/3
    std = math.sqrt(100 / 3)
    assert adv[:3].tolist() == pytest.approx([(20 / 3) / std, (-10 / 3) / std, (-10 / 3) / std])
    # group 1: mean 10/3, same values in a different order
    assert adv[3:].tolist() == pytest.approx([(20 / 3) / std, (-10 / 3) / std, (-10 / 3) / std])
    assert L.group_advantages(rewards, 3, scale="none")[:3].tolist() == pytest.approx([20 / 3, -10 / 3, -10 / 3])


def test_group_of_identical_rewards_gets_zero_advantage():
    adv = L.group_advantages(torch.tensor([10.0, 10.0, 10.0, 10.0, 0.0, 10.0]), group_size=2)
    assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert adv[4] < 0 < adv[5]


def test_group_advantages_validation():
    with pytest.raises(ValueError, match="groups of 4"):
        L.group_advantages(torch.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        L.group_advantages(torch.zeros(3), group_size=1)
    with pytest.raises(ValueError, match="allowed"):
        L.group_advantages(torch.zeros(4), group_size=2, scale="batch")


def test_kl_estimators_by_hand():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -2.0])
    d = 0.5  # ref - logp for the first token
    assert L.kl_k3(logp, ref).tolist() == pytest.approx([math.exp(-d) + d - 1, 0.0])
    assert L.kl_k1(logp, ref).tolist() == pytest.approx([0.5, 0.0])
    assert L.kl_k2(logp, ref).tolist() == pytest.approx([0.125, 0.0])
    assert torch.all(L.kl_k3(torch.randn(100), torch.randn(100)) >= 0)
    with pytest.raises(ValueError, match="allowed"):
        L.kl_estimate(logp, ref, "k4")


def test_grpo_loss_by_hand_all_aggregations():
    # two sequences: lengths 2 and 1; on-policy first step (new == old) so rho = 1
    new = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    old = new.detach().clone()
    ref = torch.tensor([[-1.0, -1.0], [-1.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -1.0])
    beta = 0.1
    k3 = lambda logp, r: math.exp(r - logp) - (r - logp) - 1  # noqa: E731
    l00 = -1.0 + beta * k3(-1.0, -1.0)   # = -1
    l01 = -1.0 + beta * k3(-2.0, -1.0)   # = -1 + 0.1 (e - 2)
    l10 = 1.0 + beta * k3(-0.5, -1.5)    # = 1 + 0.1 (e^-1)
    expected = {
        "bnpo": (l00 + l01 + l10) / 3,
        "grpo": ((l00 + l01) / 2 + l10) / 2,
        "dr_grpo": (l00 + l01 + l10) / (2 * 2),
    }
    for loss_type, value in expected.items():
        out = L.grpo_loss(new, old, ref, adv, mask, beta, loss_type=loss_type)
        assert out.loss.item() == pytest.approx(value, rel=1e-6), loss_type
    out = L.grpo_loss(new, old, ref, adv, mask, beta, loss_type="bnpo")
    assert out.kl.item() == pytest.approx((0 + k3(-2.0, -1.0) + k3(-0.5, -1.5)) / 3, rel=1e-6)
    assert out.policy_loss.item() == pytest.approx((-1 - 1 + 1) / 3, rel=1e-6)
    assert out.clip_fraction.item() == 0.0
    out.loss.backward()
    # d l / d logp = -A * rho + beta * (1 - exp(ref - logp)); bnpo divides by 3 tokens
    g = lambda a, logp, r: (-a + beta * (1 - math.exp(r - logp))) / 3  # noqa: E731
    assert_table(new.grad, [[g(1, -1.0, -1.0), g(1, -2.0, -1.0)], [g(-1, -0.5, -1.5), 0.0]])


def test_grpo_log_ratio_clamp_keeps_kl_finite():
    new = torch.tensor([[0.0]], requires_grad=True)
    ref = torch.tensor([[-200.0]])  # logp - ref = 200 -> clamped to 40
    out = L.grpo_loss(new, new.detach(), ref, torch.tensor([0.0]), torch.ones(1, 1), beta=1.0)
    assert out.loss.item() == pytest.approx(math.exp(-40) + 40 - 1, rel=1e-6)
    out.loss.backward()
    assert new.grad.item() == 0.0  # clamped: no gradient pushes further
    unclamped = L.grpo_loss(torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[200.0]]),
                            torch.tensor([0.0]), torch.ones(1, 1), beta=1.0, log_ratio_clamp=1e9)
    assert math.isinf(unclamped.loss.item())  # exp(200) overflows float32 without the clamp


def test_grpo_zero_beta_needs_no_reference_and_validation():
    x = torch.zeros(1, 2)
    out = L.grpo_loss(x, x, None, torch.tensor([1.0]), torch.ones(1, 2), beta=0.0)
    assert out.loss.item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="ref_logprobs"):
        L.grpo_loss(x, x, None, torch.tensor([1.0]), torch.ones(1, 2), beta=0.1)
    with pytest.raises(ValueError, match="allowed"):
        L.grpo_loss(x, x, x, torch.tensor([1.0]), torch.ones(1, 2), beta=0.1, loss_type="sapo")
    with pytest.raises(ValueError, match="advantages"):
        L.grpo_loss(x, x, x, torch.tensor([1.0, 2.0]), torch.ones(1, 2), beta=0.1)


# ---------------------------------------------------------------------------- loss aggregation


def _hand_batch():
    """Four responses of 1, 3, 2 and 4 tokens, per-token losses chosen so every normaliser differs."""
    values = torch.tensor([[4.0, 0, 0, 0], [1.0, 2.0, 3.0, 0], [2.0, 6.0, 0, 0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    return values, mask


def test_each_aggregation_gives_the_normaliser_it_names():
    """Sums per row 4, 6, 8, 4 (total 22) over 1, 3, 2, 4 tokens (total 10); max_len 5.

    token_mean     22 / 10                                      = 2.2
    sequence_mean  (4/1 + 6/3 + 8/2 + 4/4) / 4 = (4+2+4+1)/4    = 2.75
    constant       22 / (4 * 5)                                 = 1.1
    micro_batch_mean, micro-batches of 2: ((4+6)/4 + (8+4)/6) / 2 = (2.5 + 2) / 2 = 2.25
    """
    values, mask = _hand_batch()
    by_hand = {"token_mean": 2.2, "sequence_mean": 2.75, "constant": 1.1, "micro_batch_mean": 2.25}
    for aggregation, expected in by_hand.items():
        got = L.minibatch_loss(values, mask, aggregation, micro_batch_size=2, max_len=5)
        assert float(got) == pytest.approx(expected), aggregation
    # TRL's names are the same functions
    for trl_name, name in L.TRL_LOSS_TYPE_AGGREGATION.items():
        assert float(L.minibatch_loss(values, mask, trl_name, 2, 5)) == pytest.approx(by_hand[name])


def test_aggregations_invariant_to_micro_batch_size_where_they_should_be():
    values, mask = _hand_batch()
    for aggregation in ("token_mean", "sequence_mean", "constant"):
        results = {size: float(L.minibatch_loss(values, mask, aggregation, size, max_len=5)) for size in (1, 2, 3, 4)}
        assert max(results.values()) - min(results.values()) < 1e-6, (aggregation, results)
    # open-instruct's is not: sequence_mean at one row per micro-batch, token_mean at one micro-batch
    oi = {size: float(L.minibatch_loss(values, mask, "micro_batch_mean", size)) for size in (1, 2, 4)}
    assert oi[1] == pytest.approx(2.75) and oi[4] == pytest.approx(2.2) and oi[2] == pytest.approx(2.25)


def test_micro_batch_weights_sum_to_one_and_reject_unknown_names():
    kwargs = dict(minibatch_tokens=10.0, minibatch_sequences=4, minibatch_micro_batches=2)
    for aggregation in L.LOSS_AGGREGATIONS:
        total = sum(L.micro_batch_weight(aggregation, micro_tokens=t, micro_sequences=2, **kwargs) for t in (4.0, 6.0))
        assert total == pytest.approx(1.0), aggregation
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        L.aggregate_loss(*_hand_batch(), "sum")


def test_ppo_losses_follow_the_aggregation():
    values, mask = _hand_batch()
    zeros = torch.zeros_like(values)
    # with old == new log-probs the clipped surrogate is -A per token
    per_seq = L.ppo_policy_loss(zeros, zeros, -values, mask, aggregation="sequence_mean").loss
    assert float(per_seq) == pytest.approx(2.75)
    assert float(L.ppo_policy_loss(zeros, zeros, -values, mask).loss) == pytest.approx(2.2)  # token mean default
    v = L.ppo_value_loss(values.sqrt() * 2 ** 0.5, values.sqrt() * 2 ** 0.5, zeros, mask, aggregation="constant",
                         max_len=5)
    assert float(v.loss) == pytest.approx(1.1)  # 0.5 * (sqrt(2 l))^2 = l


# ---------------------------------------------------------------------------- PPO's KL reward estimator


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_per_token_rewards_use_the_named_kl_estimator(estimator):
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    d = ref - logp  # k3 = exp(d) - d - 1
    by_hand = {"k1": logp - ref, "k2": 0.5 * (logp - ref) ** 2, "k3": torch.exp(d) - d - 1}[estimator]
    rewards = L.per_token_rewards(torch.tensor([10.0]), logp, ref, mask, beta=0.1, kl_estimator=estimator)
    expected = -0.1 * by_hand
    expected[0, -1] += 10.0
    assert torch.allclose(rewards, expected)
    if estimator != "k1":  # the estimators differ here, so the reward really follows the name
        k1 = L.per_token_rewards(torch.tensor([10.0]), logp, ref, mask, beta=0.1)
        assert not torch.allclose(rewards, k1)
