"""Pure tensor functions for the three Tülu 3 stages: SFT, DPO and RLVR (PPO and GRPO).

Nothing here touches a model, an optimiser or a tokenizer: every function takes tensors and
returns tensors, so each one can be checked by hand on a few numbers (tests/test_losses.py) and
against TRL on identical inputs (tests/test_losses_vs_trl.py). The training loops in
sft.py, dpo.py and rlvr.py compose them.

Conventions used throughout
---------------------------
* ``logits`` are ``(batch, seq, vocab)`` and ``labels`` are ``(batch, seq)`` token ids with
  ``-100`` on every position that must not be scored (prompt, role markers, padding). Position
  ``t`` of the logits predicts token ``t + 1``, so every function that takes logits shifts:
  it scores ``labels[:, 1:]`` with ``logits[:, :-1]``; outputs therefore have ``seq - 1`` columns.
* Per-token RL tensors (``logprobs``, ``values``, ``rewards``, ``mask``) are ``(batch, T)`` over
  the response tokens only; ``mask`` is 1/True on real response tokens and 0/False on padding.
  Responses are right-padded (real tokens first, then padding).
* Log-probabilities and losses are computed in float32 whatever the dtype of the input
  (bf16 log-softmax over a 50k vocabulary loses too much precision).
* A masked mean over zero tokens is 0, not NaN, and stays connected to the autograd graph, so an
  all-padding micro-batch contributes a zero gradient instead of poisoning the step.

Where this departs from the paper's code (allenai/open-instruct, Nov 2024 / Feb 2025)
------------------------------------------------------------------------------------
* ``per_token_rewards`` adds the verifiable score on the last real response token. open-instruct's
  PPO put it one position later when that position existed (an artefact of its value-model
  indexing); the paper describes the score as the reward of the final token.
* ``whiten`` falls back to the biased variance when only one token is unmasked (open-instruct
  divided by zero there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

DPO_LOSS_TYPES = ("dpo", "dpo_norm")
GRPO_LOSS_TYPES = ("bnpo", "grpo", "dr_grpo")  # TRL's names; each is one of LOSS_AGGREGATIONS
LOSS_AGGREGATIONS = ("micro_batch_mean", "sequence_mean", "token_mean", "constant")
KL_ESTIMATORS = ("k1", "k2", "k3")
ADVANTAGE_SCALES = ("std", "none")
TRL_LOSS_TYPE_AGGREGATION = {"bnpo": "token_mean", "grpo": "sequence_mean", "dr_grpo": "constant"}


# ----------------------------------------------------------------------------------------------
# Masked reductions (shared by every loss below)
# ----------------------------------------------------------------------------------------------


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"expected tensors of one shape, got {shapes}")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true: ``sum_t values_t * mask_t`` (over ``dim``, or all)."""
    masked = values * mask.to(values.dtype)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the unmasked entries: ``sum(values * mask) / max(sum(mask), 1)``.

    With no unmasked entry the result is 0 (the numerator is an all-zero sum), not NaN.
    """
    count = mask.to(values.dtype)
    count = count.sum() if dim is None else count.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1.0)


# ----------------------------------------------------------------------------------------------
# SFT
# ----------------------------------------------------------------------------------------------


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross entropy on the unmasked labels, returned with the number of scored tokens.

    Math (positions shifted by one, ``M`` = the set of ``t`` with ``labels[t + 1] != -100``)::

        nll_t = -log softmax(logits[t])[labels[t + 1]]
        "sum":  L = sum_{t in M} nll_t                 (Tülu 3, paper 4.3.2; --reduce_loss sum)
        "mean": L = sum_{t in M} nll_t / max(|M|, 1)

    Tülu 3 sums so that every token weighs the same however the batch is split into micro-batches;
    a loop that accumulates gradients divides the summed loss by the total token count of the
    whole accumulated batch (the second return value, summed over micro-batches).

    Args:
        logits: ``(batch, seq, vocab)``.
        labels: ``(batch, seq)`` token ids, ``-100`` where not scored.
        reduction: ``"sum"`` or ``"mean"``.

    Returns:
        ``(loss, n_tokens)``: a float32 scalar and a 0-dim int64 tensor ``|M|``. With no scored
        token the loss is 0 (connected to the graph).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"sft_loss: reduction must be 'sum' or 'mean', got {reduction!r}")
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"sft_loss: expected logits (batch, seq, vocab) and labels (batch, seq), "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    n_tokens = (shift_labels != IGNORE_INDEX).sum()
    if reduction == "mean":
        nll = nll / n_tokens.clamp(min=1)
    return nll, n_tokens


# ----------------------------------------------------------------------------------------------
# Sequence log-probabilities (DPO, and the RL stages through the same shift)
# ----------------------------------------------------------------------------------------------


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every label token under ``softmax(logits / temperature)``.

    Math::

        logp_t = log softmax(logits[t] / temperature)[labels[t + 1]]     for t = 0 .. seq-2
        mask_t = labels[t + 1] != -100

    Dividing by the sampling temperature before the log-softmax is what Tülu 3 RLVR does, so the
    log-probs match the distribution the responses were sampled from.

    Returns:
        ``(logps, mask)``, both ``(batch, seq - 1)``: float32 log-probs (0 where masked) and a bool
        mask. Reduce them with :func:`logprob_sum` / :func:`logprob_mean`.
    """
    if temperature <= 0:
        raise ValueError(f"sequence_logprobs: temperature must be > 0, got {temperature}")
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"sequence_logprobs: expected logits (batch, seq, vocab) and labels (batch, seq), "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    shift_logits = logits[:, :-1].float()
    if temperature != 1.0:
        shift_logits = shift_logits / temperature
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    # gather(label) - logsumexp is log_softmax at one index, without a second vocab-sized tensor
    safe_labels = shift_labels.masked_fill(~mask, 0).unsqueeze(-1)
    picked = torch.gather(shift_logits, -1, safe_labels).squeeze(-1)
    logps = picked - torch.logsumexp(shift_logits, dim=-1)
    return logps.masked_fill(~mask, 0.0), mask


def logprob_sum(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed log-prob ``sum_t logp_t * mask_t`` -> ``(batch,)``."""
    return masked_sum(logps, mask, dim=-1)


def logprob_mean(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean log-prob ``sum_t logp_t mask_t / max(sum_t mask_t, 1)`` -> ``(batch,)``."""
    return masked_mean(logps, mask, dim=-1)


# ----------------------------------------------------------------------------------------------
# DPO
# ----------------------------------------------------------------------------------------------


@dataclass
class DPOOutput:
    """Result of :func:`dpo_loss`. ``loss`` carries gradients; the metrics are detached.

    Attributes:
        loss: scalar, mean of ``losses`` over the batch.
        losses: ``(batch,)`` per-pair loss ``-logsigmoid(margin)``.
        chosen_rewards: ``(batch,)`` ``beta * (pi_c - ref_c)`` (per-token means for dpo_norm).
        rejected_rewards: ``(batch,)`` ``beta * (pi_r - ref_r)``.
        margins: ``(batch,)`` ``chosen_rewards - rejected_rewards`` (the sigmoid's argument).
        accuracy: scalar, fraction of pairs with ``chosen_rewards > rejected_rewards``.
    """

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracy: torch.Tensor


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    *,
    loss_type: str = "dpo_norm",
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> DPOOutput:
    """DPO and length-normalised DPO (Tülu 3's "dpo_norm").

    Convention: all four log-prob tensors are SUMMED over the response tokens (``logprob_sum``),
    shape ``(batch,)``; for ``"dpo_norm"`` the response token counts are passed separately and the
    division happens here, once, for policy and reference alike (both score the same tokens).

    Math (``s`` = summed log-prob, ``n`` = response length, ``w`` chosen, ``l`` rejected)::

        "dpo":      h_w = s_pi(w) - s_ref(w)              h_l = s_pi(l) - s_ref(l)
        "dpo_norm": h_w = (s_pi(w) - s_ref(w)) / n_w      h_l = (s_pi(l) - s_ref(l)) / n_l
        reward_w = beta * h_w,  reward_l = beta * h_l,  margin = reward_w - reward_l
        loss = mean_batch( -logsigmoid(margin) )

    The dpo_norm form equals ``beta * (mean_logp_pi(w) - mean_logp_ref(w) - ...)``, the paper's
    Eq. for length-normalised DPO (beta = 5 in Tülu 3), and TRL's ``loss_type="sigmoid_norm"``
    (which also clamps the lengths at 1). "dpo" is TRL's ``"sigmoid"``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps:
            ``(batch,)`` summed response log-probs.
        beta: inverse temperature of the implicit reward, > 0.
        loss_type: ``"dpo_norm"`` (default, Tülu 3) or ``"dpo"``.
        chosen_lengths, rejected_lengths: ``(batch,)`` response token counts; required for
            ``"dpo_norm"``, ignored for ``"dpo"``. Lengths of 0 are treated as 1.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"dpo_loss: unknown loss_type {loss_type!r}; allowed: {list(DPO_LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    chosen_logratio = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected_logratio = policy_rejected_logps.float() - ref_rejected_logps.float()
    if loss_type == "dpo_norm":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("dpo_loss: loss_type 'dpo_norm' needs chosen_lengths and rejected_lengths")
        _check_same_shape(chosen_logps=policy_chosen_logps, chosen_lengths=chosen_lengths,
                          rejected_lengths=rejected_lengths)
        chosen_logratio = chosen_logratio / chosen_lengths.to(chosen_logratio).clamp(min=1.0)
        rejected_logratio = rejected_logratio / rejected_lengths.to(rejected_logratio).clamp(min=1.0)
    chosen_rewards = beta * chosen_logratio
    rejected_rewards = beta * rejected_logratio
    margins = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(margins)
    return DPOOutput(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=chosen_rewards.detach(),
        rejected_rewards=rejected_rewards.detach(),
        margins=margins.detach(),
        accuracy=(chosen_rewards > rejected_rewards).float().mean().detach(),
    )


# ----------------------------------------------------------------------------------------------
# Loss aggregation: how per-token RL losses become one number (PPO and GRPO)
# ----------------------------------------------------------------------------------------------


def _aggregation_name(aggregation: str) -> str:
    name = TRL_LOSS_TYPE_AGGREGATION.get(aggregation, aggregation)
    if name not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; allowed: {list(LOSS_AGGREGATIONS)} "
                         f"(or TRL's {list(GRPO_LOSS_TYPES)})")
    return name


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str,
                   max_len: int | None = None) -> torch.Tensor:
    """One micro-batch's per-token losses ``(B, T)`` reduced as ``aggregation`` says.

    Math (``m`` the mask, ``n_i`` row i's tokens, ``L`` = ``max_len``, default ``T``)::

        "token_mean", "micro_batch_mean":  sum_{i,t} l m / sum_{i,t} m
        "sequence_mean":                   (1/B) sum_i ( sum_t l m / n_i )
        "constant":                        sum_{i,t} l m / (B * L)

    The two token means differ only in how micro-batches combine into a minibatch
    (:func:`micro_batch_weight`). TRL's names are accepted: "bnpo" = "token_mean", "grpo" =
    "sequence_mean", "dr_grpo" = "constant".
    """
    name = _aggregation_name(aggregation)
    m = mask.to(per_token.dtype)
    if name in ("token_mean", "micro_batch_mean"):
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    if name == "sequence_mean":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    length = max_len if max_len is not None else mask.size(-1)
    return (per_token * m).sum() / (per_token.size(0) * length)


def micro_batch_weight(aggregation: str, *, micro_tokens: float, micro_sequences: int, minibatch_tokens: float,
                       minibatch_sequences: int, minibatch_micro_batches: int) -> float:
    """The factor on one micro-batch's :func:`aggregate_loss` so that the weighted sum over the
    minibatch's micro-batches (on every process) is the minibatch's loss.

    Math (minibatch of ``N`` tokens, ``S`` sequences, ``M`` micro-batches; this micro-batch ``N_m``, ``S_m``)::

        "token_mean":        N_m / N    ->  sum over all tokens / N             (DAPO; TRL "bnpo")
        "sequence_mean":     S_m / S    ->  mean over sequences of their means   (GRPO; TRL "grpo")
        "constant":          S_m / S    ->  sum over all tokens / (S * max_len)  (Dr. GRPO)
        "micro_batch_mean":  1 / M      ->  mean over micro-batches of their token means
                                             (open-instruct: masked_mean per micro-batch, DeepSpeed
                                             averages the accumulated micro-batches and processes)

    The first three do not depend on how the minibatch is cut into micro-batches; the last does
    (it is "sequence_mean" at one sequence per micro-batch, "token_mean" at one micro-batch).
    """
    name = _aggregation_name(aggregation)
    if name == "token_mean":
        return micro_tokens / max(minibatch_tokens, 1.0)
    if name in ("sequence_mean", "constant"):
        return micro_sequences / max(minibatch_sequences, 1)
    return 1.0 / max(minibatch_micro_batches, 1)


def minibatch_loss(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str, micro_batch_size: int,
                   max_len: int | None = None) -> torch.Tensor:
    """A minibatch's loss built as a training loop builds it: consecutive micro-batches of
    ``micro_batch_size`` rows, each reduced by :func:`aggregate_loss` and weighted by
    :func:`micro_batch_weight`. See those two for the math."""
    if micro_batch_size < 1:
        raise ValueError(f"minibatch_loss: micro_batch_size must be >= 1, got {micro_batch_size}")
    _check_same_shape(per_token=per_token, mask=mask)
    rows = per_token.size(0)
    starts = list(range(0, rows, micro_batch_size))
    total = per_token.new_zeros(())
    for start in starts:
        chunk = slice(start, start + micro_batch_size)
        part = aggregate_loss(per_token[chunk], mask[chunk], aggregation, max_len)
        weight = micro_batch_weight(aggregation, micro_tokens=float(mask[chunk].sum()),
                                    micro_sequences=int(mask[chunk].size(0)), minibatch_tokens=float(mask.sum()),
                                    minibatch_sequences=rows, minibatch_micro_batches=len(starts))
        total = total + part * weight
    return total


# ----------------------------------------------------------------------------------------------
# RLVR rewards (Tülu 3 PPO)
# ----------------------------------------------------------------------------------------------


def verifiable_score(
    correct: torch.Tensor,
    stopped: torch.Tensor,
    correct_reward: float = 10.0,
    non_stop_penalty: float = -10.0,
    base_score: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sequence-level RLVR score (paper Eq. 8 and Table 21).

    Math::

        score = base_score + correct_reward * 1[correct]     if the response ended with EOS
        score = non_stop_penalty                             otherwise (REPLACES the score)

    ``base_score`` is an optional extra term, e.g. a reward model's output times its weight
    (Tülu 3 used weight 0, i.e. none).

    Args:
        correct: ``(batch,)`` bool, the verifier's verdict.
        stopped: ``(batch,)`` bool, whether the response ended with EOS within the length budget.

    Returns:
        ``(batch,)`` float32 scores.
    """
    _check_same_shape(correct=correct, stopped=stopped)
    score = correct.to(torch.float32) * correct_reward
    if base_score is not None:
        _check_same_shape(correct=correct, base_score=base_score)
        score = score + base_score.to(torch.float32)
    return torch.where(stopped.bool(), score, torch.full_like(score, non_stop_penalty))


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Column of the last true entry in each row of ``mask`` -> ``(batch,)`` int64.

    Raises ValueError naming the rows that have no true entry.
    """
    mask = mask.bool()
    empty = ~mask.any(dim=-1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"response rows {rows} have no unmasked token; cannot place their score")
    positions = torch.arange(mask.size(-1), device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=-1).values


def per_token_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kl_estimator: str = "k1",
) -> torch.Tensor:
    """PPO per-token rewards: a KL penalty on every token, the score on the last real token.

    Math (``T_i`` = last unmasked position of row ``i``)::

        r_{i,t} = -beta * kl_{i,t} * mask_{i,t}  +  score_i * 1[t = T_i]
        kl_{i,t} = k1: logp - logp_ref  |  k2: (logp - logp_ref)^2 / 2  |  k3: exp(d) - d - 1, d = logp_ref - logp

    Tülu 3 used k1 (open-instruct's PPO ``--kl_estimator`` default ``kl1``, which chose the reward's
    estimate as here). Computed without gradient (rewards are data).

    Args:
        score: ``(batch,)`` sequence scores (:func:`verifiable_score`).
        logprobs, ref_logprobs: ``(batch, T)`` log-probs of the sampled tokens under the policy
            that sampled them and under the reference.
        mask: ``(batch, T)`` response mask; every row needs at least one true entry.
        beta: KL coefficient (Tülu 3: 0.05 at 8B and 405B, 0.07 at 70B).
        kl_estimator: "k1" (default), "k2" or "k3".

    Returns:
        ``(batch, T)`` float32 rewards, 0 on padding.
    """
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    if score.shape != logprobs.shape[:1]:
        raise ValueError(
            f"per_token_rewards: score must be (batch,)={tuple(logprobs.shape[:1])}, got {tuple(score.shape)}"
        )
    with torch.no_grad():
        kl = kl_estimate(logprobs.float(), ref_logprobs.float(), kl_estimator) * mask.float()
        rewards = -beta * kl
        last = last_token_index(mask)
        rewards[torch.arange(rewards.size(0), device=rewards.device), last] += score.float()
    return rewards


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to zero mean and unit variance over the unmasked entries.

    Math (``N`` = number of unmasked entries)::

        mu  = sum(x * mask) / N
        var = sum((x - mu)^2 * mask) / (N - 1)        (unbiased; /N when N == 1)
        out = (x - mu) / sqrt(var + eps)              (+ mu again if not shift_mean)

    Masked entries are returned as 0. With ``N == 0`` everything is 0.
    """
    _check_same_shape(x=x, mask=mask)
    m = mask.to(x.dtype)
    n = m.sum()
    mean = masked_sum(x, mask) / n.clamp(min=1.0)
    sq = masked_sum((x - mean) ** 2, mask)
    var = sq / (n - 1).clamp(min=1.0)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses (Tülu 3: gamma 1, lambda 0.95).

    Math (``V_{T}`` = 0 after the last real token; padding has reward 0 and value 0)::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}          (A after the last token = 0)
        R_t     = A_t + V_t                                (value-function targets)

    Computed without gradient. Advantages and returns are 0 on padding. Whitening the advantages
    (Tülu 3 does) is a separate step: :func:`whiten`.

    Returns:
        ``(advantages, returns)``, both ``(batch, T)`` float32.
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    with torch.no_grad():
        m = mask.float()
        r = rewards.float() * m
        v = values.float() * m
        steps = r.size(-1)
        advantages = torch.zeros_like(r)
        running = torch.zeros_like(r[:, 0])
        for t in reversed(range(steps)):
            next_value = v[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
            delta = r[:, t] + gamma * next_value - v[:, t]
            running = delta + gamma * lam * running
            advantages[:, t] = running
        advantages = advantages * m
        returns = (advantages + v) * m
    return advantages, returns


@dataclass
class PolicyLossOutput:
    """Result of :func:`ppo_policy_loss`: ``loss`` with gradient; detached scalar diagnostics."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def ppo_policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    aggregation: str = "token_mean",
    max_len: int | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate, reduced over the batch by ``aggregation`` (:func:`aggregate_loss`).

    Math (``rho_t = exp(logp_new_t - logp_old_t)``)::

        l_t  = max( -A_t * rho_t,  -A_t * clip(rho_t, 1 - clip, 1 + clip) )
        loss = sum_t l_t mask_t / sum_t mask_t                 ("token_mean", the default)
        clip_fraction = mean over unmasked tokens of 1[the clipped branch is the larger]
        approx_kl     = mean over unmasked tokens of 0.5 * (logp_new - logp_old)^2

    Args:
        new_logprobs: ``(batch, T)`` with gradient.
        old_logprobs: ``(batch, T)`` from the rollout policy (treated as constants).
        advantages: ``(batch, T)``, or ``(batch,)`` / ``(batch, 1)`` for one value per sequence.
        mask: ``(batch, T)``.
        clip: epsilon of the ratio clip (Tülu 3: 0.2).
    """
    _check_same_shape(new_logprobs=new_logprobs, old_logprobs=old_logprobs, mask=mask)
    advantages = _per_token(advantages, new_logprobs)
    log_ratio = new_logprobs.float() - old_logprobs.float().detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = aggregate_loss(torch.maximum(unclipped, clipped), mask, aggregation, max_len)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return PolicyLossOutput(loss=loss, clip_fraction=clip_fraction, approx_kl=approx_kl)


@dataclass
class ValueLossOutput:
    """Result of :func:`ppo_value_loss`: ``loss`` with gradient; detached ``clip_fraction``."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    aggregation: str = "token_mean",
    max_len: int | None = None,
) -> ValueLossOutput:
    """PPO clipped value loss (Tülu 3: value clip 0.2; weighted by vf_coef 0.1 in the total loss).

    Math (the mean is ``aggregation``'s, :func:`aggregate_loss`; "token_mean" by default)::

        V_clip = V_old + clip(V - V_old, -clip, +clip)
        loss   = 0.5 * mean_unmasked( max( (V - R)^2, (V_clip - R)^2 ) )
        clip_fraction = mean_unmasked( 1[(V_clip - R)^2 > (V - R)^2] )
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    values = values.float()
    old_values = old_values.float().detach()
    returns = returns.float().detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.maximum(loss_unclipped, loss_clipped), mask, aggregation, max_len)
    with torch.no_grad():
        clip_fraction = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return ValueLossOutput(loss=loss, clip_fraction=clip_fraction)


# ----------------------------------------------------------------------------------------------
# GRPO (Tülu 3.1)
# ----------------------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    eps: float = 1e-8,
    scale: str = "std",
) -> torch.Tensor:
    """Group-relative advantages: each reward compared with the other samples of its prompt.

    ``rewards`` is flat ``(n_prompts * group_size,)`` with each prompt's samples contiguous
    (prompt 0's samples first, then prompt 1's, ...).

    Math (for the group ``g`` of sample ``i``, ``G`` = group_size)::

        mu_g  = (1/G) sum_j r_j
        std_g = sqrt( sum_j (r_j - mu_g)^2 / (G - 1) )       SAMPLE std (Bessel-corrected)
        "std":  A_i = (r_i - mu_g) / (std_g + eps)
        "none": A_i =  r_i - mu_g                             (Dr. GRPO)

    The sample (unbiased) std is what Tülu 3.1's open-instruct GRPO used (``torch.std``) and what
    TRL's GRPOTrainer uses (``nanstd``, Bessel-corrected); TRL's eps is 1e-4, Tülu 3.1's 1e-8.
    A group whose rewards are all equal gets advantage exactly 0.

    Returns:
        ``(n_prompts * group_size,)`` float32 advantages (no gradient).
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"group_advantages: unknown scale {scale!r}; allowed: {list(ADVANTAGE_SCALES)}")
    if rewards.dim() != 1:
        raise ValueError(f"group_advantages: rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_advantages: {rewards.numel()} rewards cannot be split into groups of {group_size}"
        )
    if scale == "std" and group_size < 2:
        raise ValueError(
            "group_advantages: scale 'std' needs group_size >= 2 (the sample std of one value is undefined)"
        )
    with torch.no_grad():
        grouped = rewards.float().view(-1, group_size)
        centred = grouped - grouped.mean(dim=1, keepdim=True)
        if scale == "std":
            centred = centred / (grouped.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centred.reshape(-1)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k1 KL estimate ``logp - logp_ref`` (unbiased, can be negative)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k2 KL estimate ``0.5 * (logp - logp_ref)^2`` (biased, always >= 0)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 KL estimate (Schulman), unbiased and >= 0.

    Math (``d = logp_ref - logp``)::

        k3 = exp(d) - d - 1        (computed as expm1(d) - d for small d)
    """
    d = ref_logprobs - logprobs
    return torch.expm1(d) - d


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Dispatch to :func:`kl_k1`, :func:`kl_k2` or :func:`kl_k3` by name."""
    estimators = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
    if estimator not in estimators:
        raise ValueError(f"unknown kl_estimator {estimator!r}; allowed: {list(KL_ESTIMATORS)}")
    return estimators[estimator](logprobs, ref_logprobs)


@dataclass
class GRPOLossOutput:
    """Result of :func:`grpo_loss`. ``loss`` carries gradients; the rest are detached scalars.

    Attributes:
        loss: the aggregated ``policy term + beta * KL`` objective to minimise.
        policy_loss: the same aggregation of the clipped policy term alone.
        kl: mean per-token KL estimate over unmasked tokens.
        clip_fraction: fraction of unmasked tokens where the clipped branch is active.
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor


def _per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast ``(batch,)`` or ``(batch, 1)`` advantages to ``like``'s ``(batch, T)``."""
    advantages = advantages.float()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    if advantages.size(0) != like.size(0) or advantages.size(1) not in (1, like.size(1)):
        raise ValueError(
            f"advantages of shape {tuple(advantages.shape)} do not fit per-token tensors {tuple(like.shape)}"
        )
    return advantages.detach()


def grpo_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    clip_eps: float = 0.2,
    log_ratio_clamp: float = 40.0,
    loss_type: str = "bnpo",
    kl_estimator: str = "k3",
    max_completion_length: int | None = None,
) -> GRPOLossOutput:
    """GRPO loss with the KL penalty inside the loss (Tülu 3.1).

    Math (``rho_t = exp(logp_new_t - logp_old_t)``, ``A`` the sequence's group advantage)::

        pg_t = max( -A * rho_t,  -A * clip(rho_t, 1 - clip_eps, 1 + clip_eps) )
        d_t  = clamp(logp_new_t - logp_ref_t, -log_ratio_clamp, +log_ratio_clamp)
        kl_t = k3 estimate of d_t: exp(-d_t) + d_t - 1        (or k1 / k2)
        l_t  = pg_t + beta * kl_t

    Aggregation over the batch's tokens (``loss_type``, :func:`aggregate_loss`; TRL's names accepted)::

        "token_mean" / "bnpo":     sum_{i,t} l m / sum_{i,t} m        (DAPO)
        "sequence_mean" / "grpo":  mean_i ( sum_t l m / sum_t m )     (GRPO paper)
        "constant" / "dr_grpo":    sum_{i,t} l m / (batch * max_completion_length)   (Dr. GRPO)
        "micro_batch_mean":        as "token_mean" inside this batch; open-instruct (Tülu 3.1) ran
                                   it per micro-batch of 2 and averaged micro-batches
                                   (:func:`micro_batch_weight`), which weighs sequences, not tokens

    The ±40 clamp on the reference log-ratio is Tülu 3.1's guard against exp overflow in the KL
    term; TRL does not clamp, so both agree whenever |logp_new - logp_ref| < 40.
    With one micro-batch per accumulation window, TRL's "dapo" equals "bnpo".

    Args:
        new_logprobs: ``(batch, T)`` with gradient.
        old_logprobs: ``(batch, T)`` from the sampling policy (constants).
        ref_logprobs: ``(batch, T)`` under the reference policy; may be None when beta == 0.
        advantages: ``(batch,)``, ``(batch, 1)`` or ``(batch, T)``.
        mask: ``(batch, T)``.
        beta: KL coefficient (Tülu 3.1: 0.01).
        max_completion_length: divisor for "dr_grpo"; defaults to ``T``.
    """
    if loss_type not in GRPO_LOSS_TYPES + LOSS_AGGREGATIONS:
        raise ValueError(f"grpo_loss: unknown loss_type {loss_type!r}; allowed: "
                         f"{list(LOSS_AGGREGATIONS + GRPO_LOSS_TYPES)}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"grpo_loss: unknown kl_estimator {kl_estimator!r}; allowed: {list(KL_ESTIMATORS)}")
    if beta < 0:
        raise ValueError(f"grpo_loss: beta must be >= 0, got {beta}")
    _check_same_shape(new_logprobs=new_logprobs, old_logprobs=old_logprobs, mask=mask)
    if beta > 0 and ref_logprobs is None:
        raise ValueError("grpo_loss: ref_logprobs is required when beta > 0")
    advantages = _per_token(advantages, new_logprobs)
    new = new_logprobs.float()
    ratio = torch.exp(new - old_logprobs.float().detach())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    pg = torch.maximum(unclipped, clipped)

    if ref_logprobs is not None:
        _check_same_shape(new_logprobs=new_logprobs, ref_logprobs=ref_logprobs)
        ref = ref_logprobs.float().detach()
        # clamp the log-ratio, then rebuild the reference side so kl_estimate sees the clamped d
        d = torch.clamp(new - ref, -log_ratio_clamp, log_ratio_clamp)
        kl = kl_estimate(d, torch.zeros_like(d), kl_estimator)
    else:
        kl = torch.zeros_like(pg)

    max_len = max_completion_length if max_completion_length is not None else mask.size(-1)
    loss = aggregate_loss(pg + beta * kl, mask, loss_type, max_len)
    with torch.no_grad():
        policy_loss = aggregate_loss(pg, mask, loss_type, max_len)
        mean_kl = masked_mean(kl, mask)
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return GRPOLossOutput(loss=loss, policy_loss=policy_loss, kl=mean_kl, clip_fraction=clip_fraction)
