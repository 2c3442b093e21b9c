"""RLVR: reinforcement learning with verifiable rewards, as Tülu 3 (PPO) and Tülu 3.1 (GRPO) ran it.

    result = train_rlvr(RLVRConfig.cpu_preset(), model, tokenizer, rows, eval_data=heldout)
    accuracy, correct = evaluate_accuracy(model, tokenizer, heldout, max_new_tokens=96, batch_size=32)

``rows`` are RLVR rows ``{"messages": [...user turn...], "ground_truth": str, "dataset": "gsm8k" |
"math" | "ifeval"}`` (``tulu_lab.data.rlvr_row`` / ``load_rlvr``). Every step reads top to bottom:

1. rollout     this process's share of the step's prompts, ``samples_per_prompt`` samples each, drawn
               by :func:`tulu_lab.generate.generate` in inference mode with a seed derived from
               (seed, step, rank)
2. reward      ``correct_reward`` if the verifier accepts the response else 0, plus
               ``reward_model_weight * reward_model(prompts, responses)`` when a reward model is given
               (the paper's ablation), REPLACED by ``non_stop_penalty`` when the response has no EOS
3. score pass  one no-grad forward per micro-batch, once per rollout: the rollout policy's log-probs
               (adapters on), the reference log-probs (adapters disabled) and the values; every PPO
               epoch reuses them (GRPO takes the rollout policy's log-probs from the sampler)
4. advantage   "ppo": per-token reward ``-beta * kl`` (``cfg.kl_estimator``; Tülu 3: k1 = logp - logp_ref)
               with the score added on the last token, GAE (gamma 1, lambda 0.95), whitened over the batch;
               "grpo": ``(r - mean_group) / (std_group + eps)`` per prompt (``cfg.advantage_scale="none"``:
               without the std)
5. update      ``ppo_epochs`` x ``num_minibatches`` optimiser steps of the clipped policy loss, plus the
               clipped value loss x ``vf_coef`` on the separate value model (ppo) or ``beta`` x the KL
               estimate inside the loss (grpo)

Forward passes run the model on the response tokens with each distinct prompt run once per
micro-batch (the samples of a group share its key/value cache) and the language-model head applied to
response positions only; micro-batches are bucketed by length, padded to their own longest row.
Per-token losses become one number as ``cfg.loss_aggregation`` says: open-instruct's mean of
per-micro-batch token means ("micro_batch_mean", the Tülu presets), one token mean over the minibatch
("token_mean", DAPO; the embedded preset), per-sequence means ("sequence_mean") or a constant
normaliser ("constant", Dr. GRPO). Each micro-batch is weighted against its minibatch's counts summed
over every process, so with the last three, gradient accumulation, bucketing by length, skipping and
several processes all give the gradient of one big batch (:func:`rlvr_update`; tested with torchrun).
open-instruct drew its micro-batches at random; here they are bucketed by length, which matters for
"micro_batch_mean" only.

Where this departs from the paper (and from open-instruct's code)
-----------------------------------------------------------------
* LoRA instead of full fine-tuning (``cfg.lora``; full fine-tuning works too). The reference policy is
  the same network with its adapters disabled (``with model.disable_adapter():``), which is the
  starting checkpoint; without LoRA it is a frozen copy made at the start.
* Value model: the paper trains a separate value model initialised from Tulu-3-8B-RM
  (``cfg.value_model_init``, not loaded here). Here it is separate too (:class:`ValueModel`): a copy of
  the policy made at the start, sharing the policy's frozen weights but with its own adapters (or own
  weights in full fine-tuning), and a zero-initialised ``nn.Linear(hidden, 1)`` head. The value loss
  x ``vf_coef`` reaches only its parameters, whose gradient norm is clipped apart from the policy's;
  it is saved in checkpoints (``value_head``: adapters and head only).
* The score sits on the last real response token (see ``tulu_lab.losses``), not one position later.
* The score pass runs in eval mode (no LoRA dropout); the training forward runs in train mode.
* GRPO with one epoch and one minibatch skips the rollout-policy pass: the "old" log-probs are the
  detached log-probs of the training forward (ratio exactly 1), as TRL does. With several minibatches
  or epochs they are the log-probs the sampler computed while drawing (same network, same temperature;
  equal to a forward pass up to float rounding, tested), so no second pass is run either.
* Minibatches are drawn as whole GRPO groups (a random permutation of the groups) when the groups
  split evenly into them, so each prompt still runs once per micro-batch; otherwise as single rows.
* With ``beta == 0`` (GRPO), sequences whose advantage is exactly 0 (e.g. every sample of the group
  scored the same) skip their forward and backward passes: their loss term and gradient are exactly 0.
  They still count in the loss normaliser and the optimiser still steps, so the update is unchanged.
* The non-stop penalty is ``cfg.non_stop_penalty`` for both algorithms: -10 in Tülu 3 (PPO), 0.0 in
  Tülu 3.1 (GRPO); the embedded preset keeps -10 (see ``RLVRConfig.cpu_preset``).
* Log-probs come from bf16 compute (weights or autocast, ``cfg.precision``), log-softmax in float32.
  On a CPU without bf16 matrix instructions the run computes in float32 instead (with a warning).
* The learning-rate schedule advances once per rollout step (not per minibatch).
* Prompts longer than ``max_prompt_len`` tokens are dropped (as open-instruct filters them).
* Several processes: each process samples its own prompts' responses, with seeds derived from
  (seed, step, rank); dropout is reseeded the same way every step, so a resume is exact on any process.
* The rollout batch reuses prompts once the data is used up (a new shuffled pass), as open-instruct.

The random-reward control (``train_rlvr(..., reward_control="shuffled")``, the ablation's control arm):
each step's scores, computed as above, are permuted at random across the whole rollout batch (every
group of the step on this process), so each response receives the score of another, random response.
:func:`shuffled_scores` says why this control and not another.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_sequence

from tulu_lab.config import RLVRConfig
from tulu_lab.generate import format_prompt, generate
from tulu_lab.losses import (
    IGNORE_INDEX,
    gae,
    group_advantages,
    grpo_loss,
    kl_estimate,
    masked_mean,
    masked_sum,
    micro_batch_weight,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    verifiable_score,
    whiten,
)
from tulu_lab.models import bf16_is_fast
from tulu_lab.training import (
    Stage,
    StepTimer,
    TrainingRun,
    autocast,
    data_fingerprint,
    make_accelerator,
    run_identity,
    run_training,
    start_identity,
)

RewardModel = Callable[[list[str], list[str]], list[float]]
MAX_GENERATION_BATCH = 64  # rows decoded together during a rollout


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------


@dataclass
class World:
    """This process among the data-parallel processes, and the one collective the update needs."""

    size: int = 1
    rank: int = 0

    @classmethod
    def from_accelerator(cls, accelerator) -> World:
        return cls(size=accelerator.num_processes, rank=accelerator.process_index)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over every process (a copy; the input is left alone), through accelerate."""
        tensor = tensor.detach().clone()
        if self.size > 1:
            from accelerate.utils import reduce

            tensor = reduce(tensor, reduction="sum")
        return tensor


def _derived_seed(*parts: int) -> int:
    """A seed for one (seed, step, rank, ...) combination; distinct combinations get distinct seeds."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part) + 1) % (2**62)
    return value


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def check_rlvr_rows(rows: Sequence[dict], where: str = "data") -> list[dict]:
    """Validate RLVR rows; raise ValueError naming the row and field. Returns them as a list."""
    from tulu_lab.rewards import VERIFIERS

    rows = list(rows)
    if not rows:
        raise ValueError(f"{where} is empty: RLVR needs at least one {{'messages', 'ground_truth', 'dataset'}} row")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{where}[{i}]: expected a dict with 'messages', 'ground_truth', 'dataset', "
                             f"got {type(row).__name__}")
        missing = [key for key in ("messages", "ground_truth", "dataset") if key not in row]
        if missing:
            raise ValueError(f"{where}[{i}]: missing field(s) {missing}; RLVR rows need 'messages', "
                             f"'ground_truth' and 'dataset'")
        messages = row["messages"]
        if not isinstance(messages, (list, tuple)) or not messages or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError(f"{where}[{i}].messages: expected a non-empty list of {{'role', 'content'}} dicts")
        if messages[-1]["role"] != "user":
            raise ValueError(f"{where}[{i}].messages: the last message must be the user's prompt, "
                             f"got role {messages[-1]['role']!r}")
        if not isinstance(row["ground_truth"], str):
            raise ValueError(f"{where}[{i}].ground_truth: expected a string, got {type(row['ground_truth']).__name__}")
        if not isinstance(row["dataset"], str) or row["dataset"].strip().lower() not in VERIFIERS:
            raise ValueError(f"{where}[{i}].dataset: {row['dataset']!r} has no verifier; "
                             f"expected one of {sorted(VERIFIERS)}")
    return rows


def _step_prompt_indices(n_rows: int, prompts_per_step: int, step: int, seed: int) -> list[int]:
    """The rows of rollout step ``step`` (0-based): consecutive slices of shuffled passes over the data.

    Stateless (a function of seed and step only), so a resumed run draws the same prompts.
    """
    indices = []
    for position in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        data_pass, offset = divmod(position, n_rows)
        order = list(range(n_rows))
        random.Random(_derived_seed(seed, data_pass, 7)).shuffle(order)
        indices.append(order[offset])
    return indices


# ----------------------------------------------------------------------------------------------
# Forward passes: log-probs, values, entropy of the response tokens only
# ----------------------------------------------------------------------------------------------


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class MicroBatch:
    """Responses with their prompts, each distinct prompt stored (and run through the model) once.

    The samples of one GRPO group share their prompt: the prompt pass runs once per distinct prompt
    (left-padded) and its key/value cache is copied to that prompt's responses (right-padded), so the
    prompt tokens cost one forward (and backward) pass instead of one per sample.
    ``labels[:, 0]`` is ignored and ``labels[:, j + 1]`` is response token j (the shift convention of
    ``sequence_logprobs``); token 0 is predicted by the prompt's last hidden state.
    """

    rows: list[int]
    prompt_ids: torch.Tensor          # (U, Lp) distinct prompts, left-padded
    prompt_mask: torch.Tensor         # (U, Lp)
    prompt_index: torch.Tensor        # (B,) which distinct prompt each response answers
    response_ids: torch.Tensor        # (B, T) right-padded
    response_mask: torch.Tensor       # (B, T)
    response_positions: torch.Tensor  # (B, T) position ids: the prompt's length + j
    labels: torch.Tensor              # (B, T + 1)

    @property
    def response_len(self) -> int:
        return self.labels.size(1) - 1


def make_micro_batch(prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], rows: list[int],
                     pad_id: int, device: torch.device | str = "cpu") -> MicroBatch:
    """Pad the given rows to their own longest prompt and response (no padding beyond this micro-batch)."""
    distinct: dict[tuple[int, ...], int] = {}
    prompt_index = [distinct.setdefault(tuple(prompt_ids[i]), len(distinct)) for i in rows]
    prompts = list(distinct)
    responses = [response_ids[i] for i in rows]
    if any(len(r) == 0 for r in responses) or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt and response needs at least one token")
    p_max, t_max = max(len(p) for p in prompts), max(len(r) for r in responses)
    p_ids = torch.full((len(prompts), p_max), pad_id, dtype=torch.long)
    p_mask = torch.zeros((len(prompts), p_max), dtype=torch.long)
    for u, p in enumerate(prompts):
        p_ids[u, p_max - len(p):] = torch.tensor(p)
        p_mask[u, p_max - len(p):] = 1
    r_ids = torch.full((len(rows), t_max), pad_id, dtype=torch.long)
    r_mask = torch.zeros((len(rows), t_max), dtype=torch.long)
    labels = torch.full((len(rows), t_max + 1), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), t_max), dtype=torch.long)
    for i, (u, r) in enumerate(zip(prompt_index, responses)):
        r_ids[i, :len(r)] = torch.tensor(r)
        r_mask[i, :len(r)] = 1
        labels[i, 1:len(r) + 1] = torch.tensor(r)
        positions[i] = torch.arange(t_max) + len(prompts[u])
    return MicroBatch(rows, p_ids.to(device), p_mask.to(device), torch.tensor(prompt_index, device=device),
                      r_ids.to(device), r_mask.to(device), positions.to(device), labels.to(device))


@dataclass
class ForwardOutput:
    logprobs: torch.Tensor            # (B, T) float32, 0 on padding
    mask: torch.Tensor                # (B, T) bool
    values: torch.Tensor | None       # (B, T) float32
    entropy: torch.Tensor | None      # (B, T) float32, detached


def _response_hidden(model, micro: MicroBatch) -> torch.Tensor:
    """Last hidden states ``(B, T + 1, H)``: the prompt's last position, then every response position
    (position j predicts response token j). Each distinct prompt runs once; its key/value cache is
    shared by its responses."""
    decoder = _base_model(model).get_decoder()
    # 1. each distinct prompt once; keep its key/value cache
    prompt_positions = (micro.prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_out = decoder(input_ids=micro.prompt_ids, attention_mask=micro.prompt_mask,
                         position_ids=prompt_positions, use_cache=True)
    cache = prompt_out.cache
    # 2. the cache copied to every response of the prompt (differentiable indexing), then the responses
    cache.batch_select_indices(micro.prompt_index)
    response_out = decoder(input_ids=micro.response_ids,
                           attention_mask=torch.cat([micro.prompt_mask[micro.prompt_index], micro.response_mask], -1),
                           position_ids=micro.response_positions, cache=cache, use_cache=True)
    # 3. the prompt's last hidden state predicts response token 0, response state j predicts token j + 1
    last_prompt = prompt_out.last_hidden_state[micro.prompt_index, -1:]
    return torch.cat([last_prompt, response_out.last_hidden_state], dim=1)


def forward_response(model, micro: MicroBatch, temperature: float, *, value_head: nn.Module | None = None,
                     with_entropy: bool = False) -> ForwardOutput:
    """Log-probs (and values, entropy) of the response tokens under ``softmax(logits / temperature)``.

    Each distinct prompt runs once (its cache is shared by its responses) and the language-model head
    runs on the response positions only. Equals scoring ``model(prompt + response).logits`` for causal
    LMs whose head is a plain output projection (Llama, Qwen, Mistral, ...; a test checks it).

    ``value_head``: a :class:`ValueModel` (its own trunk: the values cost a second pass and their
    gradient never reaches ``model``), or a bare module applied to ``model``'s own hidden states
    (a value head sharing the policy's trunk).
    """
    base = _base_model(model)
    response_hidden = _response_hidden(model, micro)   # (B, T + 1, H)
    logprobs, mask, entropy = _head_logprobs(base.get_output_embeddings(), response_hidden[:, :-1],
                                             micro.labels[:, 1:], temperature, with_entropy)
    values = None
    if isinstance(value_head, ValueModel):
        values = value_head(micro)
    elif value_head is not None:
        with torch.autocast(device_type=response_hidden.device.type, enabled=False):  # values in float32
            values = value_head(response_hidden[:, :-1].float()).squeeze(-1)
    return ForwardOutput(logprobs, mask, values, entropy)


def _head_logprobs(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, temperature: float,
                   with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``labels`` (B, T) under ``softmax(head(hidden) / temperature)``, computed on the
    unpadded positions only (the vocabulary-wide tensors are the largest of the pass).

    For a bias-free head (Llama's), ``head(h / T) = head(h) / T``: dividing the hidden state costs H
    operations per position instead of V. Returns (log-probs, mask, detached entropy or None), each
    (B, T), 0 where masked: what ``sequence_logprobs`` gives on the full logits, up to float rounding.
    """
    mask = labels != IGNORE_INDEX
    real = hidden[mask]                                                  # (N, H)
    bias_free = getattr(head, "bias", None) is None
    if temperature != 1.0 and bias_free:
        real = real / temperature
    logits = head(real).float()                                          # (N, V)
    if temperature != 1.0 and not bias_free:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:
        with torch.no_grad():
            log_p = logits - log_norm.unsqueeze(-1)
            entropy = _unpack(mask, -(log_p.exp() * log_p).sum(-1))
    return _unpack(mask, picked), mask, entropy


def _unpack(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Values of the True positions of ``mask`` back in its (B, T) shape, 0 elsewhere (differentiable)."""
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


class ValueModel(nn.Module):
    """PPO's value model, apart from the policy: its own trunk and a linear head.

    The trunk is a copy of the policy made when the value model is created (so it starts from the
    policy's weights, as the paper's starts from a reward model's) that SHARES the policy's frozen
    tensors: with LoRA, the frozen base (quantised or not) is held once and the value model has its
    own adapters; with full fine-tuning every weight is its own. The head is ``nn.Linear(hidden, 1)``,
    zero-initialised (values start at 0).

    ``parameters()`` yields only what the value model trains (its adapters or weights, and the head),
    so ``policy params + list(value.parameters())`` is the set one optimiser updates; the frozen
    tensors it shares belong to the policy. ``state_dict()`` holds the same tensors (checkpoints stay
    small). The value loss reaches these parameters only, and :func:`rlvr_update` clips their gradient
    norm separately from the policy's. AdamW is per-element, so one AdamW over both sets takes exactly
    the steps of two AdamW optimisers with the same settings (open-instruct ran two, with equal settings).
    """

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, micro: MicroBatch) -> torch.Tensor:
        """Values ``(B, T)`` (float32) of the states before each response token."""
        hidden = _response_hidden(self.trunk, micro)[:, :-1]
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.head(hidden.float()).squeeze(-1)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        for name, param in super().named_parameters(prefix, recurse, remove_duplicate):
            if param.requires_grad:
                yield name, param

    def parameters(self, recurse: bool = True):
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {name: param.detach() for name, param in self.named_parameters()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
        if strict and (missing or unexpected):
            raise ValueError(f"ValueModel.load_state_dict: missing {missing[:5]}, unexpected {unexpected[:5]} "
                             f"(saved by a run with another model or LoRA configuration?)")
        with torch.no_grad():
            for name, tensor in state_dict.items():
                if name in own:
                    own[name].copy_(tensor)
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


def make_value_model(model) -> ValueModel:
    """A :class:`ValueModel` initialised from ``model``'s current weights (call it after the adapters
    are attached): frozen tensors shared with ``model``, trainable ones copied, a zero head."""
    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers()) if not t.requires_grad}
    trunk = copy.deepcopy(model, memo=shared)
    hidden = _base_model(model).config.hidden_size
    head = nn.Linear(hidden, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return ValueModel(trunk, head.to(next(model.parameters()).device))


def make_value_head(model) -> ValueModel:
    """PPO's value model for ``model`` (see :class:`ValueModel`); kept under the name the loop uses."""
    return make_value_model(model)


# ----------------------------------------------------------------------------------------------
# The rollout batch
# ----------------------------------------------------------------------------------------------


@dataclass
class RolloutBatch:
    """One step's responses on this process, with everything the update needs.

    Per-token tensors are ``(n, T)`` over response tokens, right-padded, ``T`` the longest response
    here. Row ``i`` is row ``global_offset + i`` of the step's batch over all processes; rows of one
    prompt's group are contiguous.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    scores: torch.Tensor                          # (n,) sequence scores
    group_size: int
    global_offset: int = 0
    old_logprobs: torch.Tensor | None = None      # rollout policy, adapters on
    sampler_logprobs: torch.Tensor | None = None  # the same, as the sampler computed them while drawing
    ref_logprobs: torch.Tensor | None = None      # reference policy, adapters off
    old_values: torch.Tensor | None = None        # ppo only
    entropy: torch.Tensor | None = None
    advantages: torch.Tensor | None = None        # ppo (n, T); grpo (n,)
    returns: torch.Tensor | None = None           # ppo only

    def __post_init__(self):
        if not (len(self.prompt_ids) == len(self.response_ids) == len(self.scores)):
            raise ValueError(f"RolloutBatch: {len(self.prompt_ids)} prompts, {len(self.response_ids)} responses "
                             f"and {len(self.scores)} scores must be equally many")
        if len(self.scores) % self.group_size:
            raise ValueError(f"RolloutBatch: {len(self.scores)} rows do not split into groups of {self.group_size}")

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def response_mask(self) -> torch.Tensor:
        lengths = torch.tensor([len(r) for r in self.response_ids])
        width = int(lengths.max()) if len(lengths) else 0
        return torch.arange(width)[None, :] < lengths[:, None]

    def total_lengths(self) -> list[int]:
        return [len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids)]


def _micro_batches(batch: RolloutBatch, rows: list[int], size: int) -> list[list[int]]:
    """``size`` rows per micro-batch, bucketed by length so that padding stays small: longest prompts
    first, the responses of one prompt together (their prompt then runs once), longest responses first."""
    first_row: dict[tuple[int, ...], int] = {}
    for i in sorted(rows):
        first_row.setdefault(tuple(batch.prompt_ids[i]), i)

    def key(i: int):
        prompt = batch.prompt_ids[i]
        return (-len(prompt), first_row[tuple(prompt)], -len(batch.response_ids[i]), i)

    ordered = sorted(rows, key=key)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def _put_rows(target: torch.Tensor, rows: list[int], values: torch.Tensor) -> None:
    target[rows, :values.size(1)] = values.to(target.dtype).cpu()


def _needs_policy_pass(cfg: RLVRConfig) -> bool:
    """PPO needs the rollout policy's log-probs for its KL reward and values for GAE; GRPO only when
    the policy changes between the rollout and a later minibatch or epoch."""
    return cfg.algorithm == "ppo" or cfg.ppo_epochs > 1 or cfg.num_minibatches > 1


@torch.no_grad()
def score_rollout(cfg: RLVRConfig, model, batch: RolloutBatch, *, value_head: nn.Module | None = None,
                  ref_model=None) -> RolloutBatch:
    """The score pass: rollout-policy log-probs, values and entropy (adapters on) and reference
    log-probs (adapters off, or ``ref_model``), computed once per rollout and kept in ``batch``."""
    device = next(model.parameters()).device
    pad_id = _pad_id(model)
    n, width = len(batch), batch.response_mask.size(1)
    # beta 0: the reference is scored only to log the KL, and only where it costs no second model
    need_policy = _needs_policy_pass(cfg)
    if need_policy and cfg.algorithm == "grpo" and batch.sampler_logprobs is not None:
        # the sampler already computed the rollout policy's log-probs: no second forward pass
        batch.old_logprobs = batch.sampler_logprobs
        need_policy = False
    need_ref = cfg.beta > 0 or (cfg.track_kl and (ref_model is not None or hasattr(model, "disable_adapter")))
    if need_policy:
        batch.old_logprobs = torch.zeros(n, width)
        batch.entropy = torch.zeros(n, width)
        if value_head is not None:
            batch.old_values = torch.zeros(n, width)
    if need_ref:
        batch.ref_logprobs = torch.zeros(n, width)
    was_training = model.training
    value_was_training = value_head.training if value_head is not None else False
    model.eval()
    if value_head is not None:
        value_head.eval()
    try:
        for rows in _micro_batches(batch, list(range(n)), cfg.per_device_batch):
            micro = make_micro_batch(batch.prompt_ids, batch.response_ids, rows, pad_id, device)
            with autocast(cfg, device):
                if need_policy:
                    out = forward_response(model, micro, cfg.temperature, value_head=value_head, with_entropy=True)
                    _put_rows(batch.old_logprobs, rows, out.logprobs)
                    _put_rows(batch.entropy, rows, out.entropy)
                    if value_head is not None:
                        _put_rows(batch.old_values, rows, out.values)
                if need_ref:
                    if ref_model is not None:
                        ref = forward_response(ref_model, micro, cfg.temperature)
                    else:
                        with model.disable_adapter():
                            ref = forward_response(model, micro, cfg.temperature)
                    _put_rows(batch.ref_logprobs, rows, ref.logprobs)
    finally:
        model.train(was_training)
        if value_head is not None:
            value_head.train(value_was_training)
    return batch


def _pad_id(model) -> int:
    pad = getattr(_base_model(model).config, "pad_token_id", None)
    return int(pad) if pad is not None else 0


# ----------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------


def whiten_global(x: torch.Tensor, mask: torch.Tensor, world: World) -> torch.Tensor:
    """:func:`tulu_lab.losses.whiten` with the mean and variance taken over every process's tokens."""
    if world.size == 1:
        return whiten(x, mask)
    m = mask.to(x.dtype)
    n = world.sum(m.sum())
    mean = world.sum(masked_sum(x, mask)) / n.clamp(min=1.0)
    var = world.sum(masked_sum((x - mean) ** 2, mask)) / (n - 1).clamp(min=1.0)
    return (x - mean) * torch.rsqrt(var + 1e-8) * m


def compute_advantages(cfg: RLVRConfig, batch: RolloutBatch, world: World | None = None) -> RolloutBatch:
    """PPO: per-token KL reward (``cfg.kl_estimator``) + score on the last token -> GAE -> whitening.
    GRPO: group-relative, divided by the group's std unless ``cfg.advantage_scale`` is "none"."""
    world = world or World()
    if cfg.algorithm == "grpo":
        batch.advantages = group_advantages(batch.scores, batch.group_size, cfg.advantage_eps,
                                            scale=cfg.advantage_scale)
        return batch
    mask = batch.response_mask
    if batch.old_logprobs is None or batch.old_values is None:
        raise ValueError("compute_advantages: PPO needs the score pass first (old log-probs and values)")
    ref = batch.ref_logprobs if batch.ref_logprobs is not None else batch.old_logprobs  # beta 0: no KL
    rewards = per_token_rewards(batch.scores, batch.old_logprobs, ref, mask, cfg.beta, cfg.kl_estimator)
    advantages, returns = gae(rewards, batch.old_values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = whiten_global(advantages, mask, world)
    batch.advantages, batch.returns = advantages, returns
    return batch


# ----------------------------------------------------------------------------------------------
# Update
# ----------------------------------------------------------------------------------------------


def _minibatch_rows(cfg: RLVRConfig, batch: RolloutBatch, step: int, epoch: int, world: World) -> list[list[int]]:
    """This process's rows of each minibatch, from a permutation of the GLOBAL batch, so one process
    and several processes put the same sequences in the same minibatch. Whole groups are permuted when
    they split evenly into the minibatches (a prompt then still runs once per micro-batch); otherwise
    single rows are (PPO's groups are single responses anyway)."""
    n_local = len(batch)
    if cfg.num_minibatches == 1:
        return [list(range(n_local))]
    n_global = n_local * world.size
    unit = batch.group_size if (n_global // batch.group_size) % cfg.num_minibatches == 0 else 1
    generator = torch.Generator().manual_seed(_derived_seed(cfg.seed, step, epoch, 11))
    order = torch.randperm(n_global // unit, generator=generator).tolist()
    per_minibatch = math.ceil(len(order) / cfg.num_minibatches)
    lo, hi = batch.global_offset, batch.global_offset + n_local
    minibatches = []
    for start in range(0, len(order), per_minibatch):
        rows = [u * unit + j for u in order[start:start + per_minibatch] for j in range(unit)]
        minibatches.append([r - lo for r in rows if lo <= r < hi])
    return minibatches


def _sync_gradients(params: list[torch.Tensor], world: World) -> None:
    """Sum gradients over processes (one flat all-reduce). A parameter without gradient gets zeros,
    so the optimiser steps exactly as if a zero-gradient backward pass had run."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world.size > 1:
        flat = world.sum(torch.cat([p.grad.reshape(-1) for p in params]))
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()


@dataclass
class UpdateStats:
    loss: float
    policy_loss: float
    value_loss: float | None
    clip_ratio: float
    value_clip_ratio: float | None
    kl: float | None            # from the first epoch's forward (GRPO without a score pass)
    entropy: float | None
    trained_sequences: int      # sequences that went through forward + backward, per epoch, all processes
    losses: list[float]         # the global loss of every optimiser step


def rlvr_update(cfg: RLVRConfig, model, optimizer: torch.optim.Optimizer, batch: RolloutBatch, *,
                value_head: nn.Module | None = None, step: int = 0, world: World | None = None,
                params: list[torch.Tensor] | None = None) -> UpdateStats:
    """``ppo_epochs`` x ``num_minibatches`` optimiser steps on a scored rollout batch with advantages.

    Each micro-batch's loss is reduced and weighted as ``cfg.loss_aggregation`` says
    (:func:`tulu_lab.losses.aggregate_loss`, :func:`tulu_lab.losses.micro_batch_weight`) against the
    minibatch's GLOBAL counts (tokens, sequences, micro-batches over every process); gradients are
    summed over processes, then clipped and applied. With "token_mean", "sequence_mean" and "constant"
    the result does not depend on the micro-batch size, the bucketing, the skipped zero-advantage
    sequences or the number of processes (up to float rounding); "micro_batch_mean" (open-instruct's)
    depends on the micro-batches by definition, so nothing is skipped there.

    PPO: the value loss reaches the value model's parameters only (:class:`ValueModel`); the policy's
    and the value model's gradients are clipped to ``cfg.grad_clip`` each, separately, as open-instruct
    stepped two models. ``params`` (default: the policy's trainable parameters and the value model's)
    is what ``optimizer`` updates.
    """
    world = world or World()
    if batch.advantages is None:
        raise ValueError("rlvr_update: compute_advantages first")
    is_ppo = cfg.algorithm == "ppo"
    if is_ppo and (value_head is None or batch.returns is None):
        raise ValueError("rlvr_update: PPO needs a value head and returns")
    if batch.old_logprobs is None and _needs_policy_pass(cfg):
        raise ValueError("rlvr_update: this configuration needs the rollout log-probs (score_rollout)")
    if cfg.beta > 0 and batch.ref_logprobs is None:
        raise ValueError("rlvr_update: beta > 0 needs the reference log-probs (score_rollout)")
    device = next(model.parameters()).device
    pad_id = _pad_id(model)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad] + (
        [p for p in value_head.parameters()] if is_ppo else [])
    value_ids = {id(p) for p in value_head.parameters()} if is_ppo else set()
    clip_groups = [[p for p in params if id(p) not in value_ids], [p for p in params if id(p) in value_ids]]
    aggregation = cfg.loss_aggregation
    mask_all = batch.response_mask
    per_seq_adv = batch.advantages.dim() == 1
    # beta 0: a zero advantage gives an exactly zero loss term and gradient (and, except where the
    # micro-batches themselves define the weights, the same normaliser)
    skippable = (not is_ppo and cfg.beta == 0 and per_seq_adv and aggregation != "micro_batch_mean")

    sums = {k: torch.zeros((), dtype=torch.float64) for k in
            ("loss", "policy", "value", "clip", "vclip", "kl", "entropy", "tokens", "first_tokens", "trained")}
    losses = []
    model.train()
    if value_head is not None:
        value_head.train()
    for epoch in range(cfg.ppo_epochs):
        for rows in _minibatch_rows(cfg, batch, step, epoch, world):
            keep = [i for i in rows if not (skippable and float(batch.advantages[i]) == 0.0)]
            micro_batches = _micro_batches(batch, keep, cfg.per_device_batch)
            # this minibatch's counts over every process: tokens, sequences, micro-batches
            local_tokens = int(mask_all[rows].sum()) if rows else 0
            totals_mb = world.sum(torch.tensor([float(local_tokens), float(len(rows)), float(len(micro_batches))],
                                               dtype=torch.float64)).tolist()
            step_loss = torch.zeros((), dtype=torch.float64)
            for micro_rows in micro_batches:
                micro = make_micro_batch(batch.prompt_ids, batch.response_ids, micro_rows, pad_id, device)
                t = micro.response_len
                mask = mask_all[micro_rows, :t].to(device)
                n_tokens = float(mask.sum())
                weight = micro_batch_weight(aggregation, micro_tokens=n_tokens, micro_sequences=len(micro_rows),
                                            minibatch_tokens=totals_mb[0], minibatch_sequences=int(totals_mb[1]),
                                            minibatch_micro_batches=int(totals_mb[2]))
                with autocast(cfg, device):
                    out = forward_response(model, micro, cfg.temperature, value_head=value_head if is_ppo else None,
                                           with_entropy=epoch == 0 and batch.entropy is None)
                old = (batch.old_logprobs[micro_rows, :t].to(device) if batch.old_logprobs is not None
                       else out.logprobs.detach())
                adv = batch.advantages[micro_rows].to(device)
                adv = adv if per_seq_adv else adv[:, :t]
                if is_ppo:
                    pg = ppo_policy_loss(out.logprobs, old, adv, mask, cfg.clip, aggregation, cfg.max_new_tokens)
                    vl = ppo_value_loss(out.values, batch.old_values[micro_rows, :t].to(device),
                                        batch.returns[micro_rows, :t].to(device), mask, cfg.value_clip,
                                        aggregation, cfg.max_new_tokens)
                    loss = pg.loss + cfg.vf_coef * vl.loss
                    policy_loss, clip_fraction = pg.loss.detach(), pg.clip_fraction
                    sums["value"] += float(vl.loss.detach()) * weight
                    sums["vclip"] += float(vl.clip_fraction) * n_tokens
                else:
                    ref = batch.ref_logprobs[micro_rows, :t].to(device) if batch.ref_logprobs is not None else None
                    out_grpo = grpo_loss(out.logprobs, old, ref, adv, mask, cfg.beta, cfg.clip,
                                         cfg.log_ratio_clamp, aggregation, cfg.kl_estimator,
                                         max_completion_length=cfg.max_new_tokens)
                    loss, policy_loss, clip_fraction = out_grpo.loss, out_grpo.policy_loss, out_grpo.clip_fraction
                    if epoch == 0 and ref is not None:
                        sums["kl"] += float(out_grpo.kl) * n_tokens
                (loss * weight).backward()
                step_loss += float(loss.detach()) * weight
                sums["policy"] += float(policy_loss) * weight
                sums["clip"] += float(clip_fraction) * n_tokens
                sums["tokens"] += n_tokens
                if epoch == 0:
                    if out.entropy is not None:
                        sums["entropy"] += float(masked_sum(out.entropy, mask))
                    sums["first_tokens"] += n_tokens
                    sums["trained"] += len(micro_rows)
            _sync_gradients(params, world)
            if cfg.grad_clip is not None:
                for group in clip_groups:  # the policy's, then the value model's: each its own norm
                    if group:
                        torch.nn.utils.clip_grad_norm_(group, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(world.sum(step_loss)))
            sums["loss"] += step_loss
    totals = {k: float(world.sum(v)) for k, v in sums.items()}
    n_steps = cfg.ppo_epochs * cfg.num_minibatches
    first_tokens = max(totals["first_tokens"], 1.0)
    return UpdateStats(
        loss=totals["loss"] / n_steps,
        policy_loss=totals["policy"] / n_steps,
        value_loss=totals["value"] / n_steps if is_ppo else None,
        clip_ratio=totals["clip"] / max(totals["tokens"], 1.0),
        value_clip_ratio=totals["vclip"] / max(totals["tokens"], 1.0) if is_ppo else None,
        kl=totals["kl"] / first_tokens if (not is_ppo and batch.ref_logprobs is not None) else None,
        entropy=totals["entropy"] / first_tokens if totals["first_tokens"] > 0 else None,
        trained_sequences=int(totals["trained"]),
        losses=losses,
    )


# ----------------------------------------------------------------------------------------------
# Rollout and reward
# ----------------------------------------------------------------------------------------------


def rollout(cfg: RLVRConfig, model, tokenizer, rows: list[dict], prompt_texts: list[str], *, seed: int,
            reward_model: RewardModel | None = None, global_offset: int = 0,
            reward_control: str | None = None) -> tuple[RolloutBatch, dict]:
    """Sample ``samples_per_prompt`` responses per row, score them; returns the batch and raw counts.

    ``reward_control="shuffled"``: the scores are permuted across the batch (:func:`shuffled_scores`);
    ``info["verifiable_scores"]`` keeps the scores as the verifier gave them."""
    device = next(model.parameters()).device
    k = cfg.samples_per_prompt
    with autocast(cfg, device):
        generations = generate(model, tokenizer, prompt_texts, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, num_samples=k, seed=seed,
                               batch_size=min(MAX_GENERATION_BATCH, max(len(prompt_texts) * k, 1)),
                               progress=False)
    correct = [_verify(rows[g.prompt_index], g.text) for g in generations]
    stopped = [g.stopped for g in generations]
    base_score = None
    if reward_model is not None:
        rm = reward_model([g.prompt for g in generations], [g.text for g in generations])
        rm = _check_reward_model_output(rm, len(generations))
        base_score = torch.tensor(rm, dtype=torch.float32) * cfg.reward_model_weight
    scores = verifiable_score(torch.tensor(correct), torch.tensor(stopped), cfg.correct_reward,
                              cfg.non_stop_penalty, base_score)
    verifiable_scores = scores.clone()
    if reward_control == "shuffled":
        scores = shuffled_scores(scores, _derived_seed(seed, 31))
    elif reward_control is not None:
        raise ValueError(f"reward_control must be None or one of {list(REWARD_CONTROLS)}, got {reward_control!r}")
    prompt_ids = [tokenizer(prompt_texts[g.prompt_index], add_special_tokens=False)["input_ids"] for g in generations]
    batch = RolloutBatch(prompt_ids=prompt_ids, response_ids=[list(g.token_ids) for g in generations],
                         scores=scores, group_size=k, global_offset=global_offset,
                         sampler_logprobs=pad_sequence([torch.tensor(g.logprobs, dtype=torch.float32)
                                                        for g in generations], batch_first=True))
    info = {"correct": correct, "stopped": stopped, "lengths": [len(g.token_ids) for g in generations],
            "generations": generations, "verifiable_scores": verifiable_scores}
    return batch, info


REWARD_CONTROLS = ("shuffled",)


def shuffled_scores(scores: torch.Tensor, seed: int) -> torch.Tensor:
    """The random-reward control: the step's scores permuted uniformly at random across the batch.

    Every response keeps a score drawn from this step's own scores, so the reward keeps its scale
    (0 / ``correct_reward`` / ``non_stop_penalty``), its batch mean and its spread exactly, step by
    step, including as the policy changes; but which response gets which score is decided by the
    permutation alone, so the score a response receives carries no information about whether it was
    correct (or stopped). A Bernoulli draw at another run's running accuracy would keep the mean only
    in expectation, lose the non-stop penalty's share and tie this run to that run's log; permuting
    within groups would keep each group's scores and so its advantages up to a relabelling, still
    independent of correctness but never moving the group mean. Across groups, GRPO still sees groups
    with unequal scores and a non-zero gradient, so the control trains as much as the verified run
    and differs from it only in the link between a response and its score. (With several processes
    each permutes its own share of the batch.) Deterministic in ``seed``: a resumed run draws the same.
    """
    generator = torch.Generator().manual_seed(int(seed) % (2**63))
    order = torch.randperm(len(scores), generator=generator)
    return scores[order].clone()


def _verify(row: dict, text: str) -> bool:
    from tulu_lab.rewards import verify

    return bool(verify(row["dataset"], text, row["ground_truth"]))


def _check_reward_model_output(values, n: int) -> list[float]:
    values = list(values)
    if len(values) != n:
        raise ValueError(f"reward_model returned {len(values)} scores for {n} responses")
    out = []
    for i, v in enumerate(values):
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"reward_model returned a non-finite score {v} for response {i}")
        out.append(v)
    return out


# ----------------------------------------------------------------------------------------------
# Held-out evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_accuracy(model, tokenizer, rows: Sequence[dict], *, max_new_tokens: int,
                      batch_size: int = 32, progress: bool = False) -> tuple[float, list[bool]]:
    """Greedy accuracy on RLVR rows (verified by the row's verifier): (accuracy, correct per row)."""
    rows = check_rlvr_rows(rows, "eval rows")
    generations = generate(model, tokenizer, [r["messages"] for r in rows], max_new_tokens=max_new_tokens,
                           temperature=0.0, batch_size=batch_size, progress=progress)
    correct = [_verify(rows[g.prompt_index], g.text) for g in generations]
    return sum(correct) / len(correct), correct


# ----------------------------------------------------------------------------------------------
# The stage: rollout, reward, score pass, advantages, update
# ----------------------------------------------------------------------------------------------


class RLVRStage(Stage):
    """Per rollout step: 1. rollout and 2. reward of this process's prompts, 3. the score pass,
    4. advantages, 5. ``ppo_epochs`` x ``num_minibatches`` optimiser steps (gradients summed over
    processes by :func:`rlvr_update`, so the model is not wrapped); the schedule advances once."""

    name = "rlvr"
    wrap_model = False
    checkpoint_at_end = True

    def __init__(self, cfg: RLVRConfig, tokenizer, rows, prompt_texts, usable, eval_rows, reward_model,
                 world: World, reward_control: str | None = None):
        super().__init__(cfg, cfg.num_steps)
        self.tokenizer, self.rows, self.prompt_texts, self.usable = tokenizer, rows, prompt_texts, usable
        self.eval_rows, self.reward_model, self.world = eval_rows, reward_model, world
        self.reward_control = reward_control
        self.value_head = self.ref_model = None
        self.eval_accuracy = None
        self.history: list[dict] = []

    def prepare_model(self, model, run: TrainingRun):
        cfg = self.cfg
        if cfg.precision != "fp32" and not bf16_is_fast(run.device):
            warnings.warn(f"train_rlvr: precision {cfg.precision!r} asked for, but {run.device} has no native "
                          f"bf16 (emulated bf16 matmuls run far slower than float32): computing in float32")
            self.cfg = dataclasses.replace(cfg, precision="fp32")
            if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
                model = model.float()
        return model

    def extra_modules(self, model, run: TrainingRun) -> dict[str, nn.Module]:
        if self.cfg.beta > 0 and not hasattr(model, "disable_adapter"):
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # full fine-tuning: a frozen copy
        if self.cfg.algorithm != "ppo":
            return {}
        self.value_head = make_value_head(model)
        return {"value_head": self.value_head}

    def before_resume(self, run: TrainingRun) -> None:
        if any(str(row.get("dataset", "")).lower() == "math" for row in self.rows):
            from tulu_lab.rewards import start_symbolic_worker

            start_symbolic_worker(wait=True)  # no MATH answer judged while sympy still imports
        if len(self.usable) < len(self.rows) and run.is_main:
            print(f"[tulu_lab] dropped {len(self.rows) - len(self.usable)} prompts longer than "
                  f"{self.cfg.max_prompt_len} tokens", flush=True)
        if self.value_head is not None and self.cfg.value_model_init and run.is_main:
            print(f"[tulu_lab] value model: the policy's weights, own adapters, zero-initialised head "
                  f"(not {self.cfg.value_model_init})", flush=True)

    def step(self, run: TrainingRun, step: int, learning_rate: float) -> dict[str, Any]:
        cfg, model, world = self.cfg, run.model, self.world
        timer = StepTimer()
        local_prompts = cfg.prompts_per_step // world.size
        # ---- 1. rollout + 2. reward ----
        step_rows = _step_prompt_indices(len(self.usable), cfg.prompts_per_step, step, cfg.seed)
        mine = [self.usable[i] for i in step_rows[world.rank * local_prompts:(world.rank + 1) * local_prompts]]
        batch, info = rollout(cfg, model, self.tokenizer, [self.rows[i] for i in mine],
                              [self.prompt_texts[i] for i in mine], seed=_derived_seed(cfg.seed, step, world.rank),
                              reward_model=self.reward_model, reward_control=self.reward_control,
                              global_offset=world.rank * local_prompts * cfg.samples_per_prompt)
        generate_time = timer.lap()
        # ---- 3. score pass + 4. advantages ----
        score_rollout(cfg, model, batch, value_head=self.value_head, ref_model=self.ref_model)
        compute_advantages(cfg, batch, world)
        # ---- 5. update ----
        stats = rlvr_update(cfg, model, run.optimizer, batch, value_head=self.value_head, step=step, world=world,
                            params=run.params)
        run.scheduler.step()
        update_time = timer.lap()
        record = _step_record(cfg, step, batch, info, stats, world, learning_rate)
        record.update({"time/generate": generate_time, "time/update": update_time,
                       "step_time": generate_time + update_time})
        return record

    def after_step(self, run: TrainingRun, step: int, record: dict[str, Any], last: bool) -> None:
        cfg = self.cfg
        if self.eval_rows is not None and cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or last):
            self.eval_accuracy = _distributed_accuracy(run.model, self.tokenizer, self.eval_rows, cfg, self.world)
            record["eval/accuracy"] = self.eval_accuracy

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"reward": f"{record['reward']:.2f}", "acc": f"{record['accuracy']:.2f}",
                "kl": f"{record['kl']:.3f}" if record["kl"] is not None else "-",
                "len": f"{record['completions/mean_length']:.0f}"}

    def summary(self, run: TrainingRun, steps_done: int, last_record: dict[str, Any]) -> dict[str, Any]:
        history = run.log.read() if run.is_main else []
        self.history = history
        eval_accuracy = self.eval_accuracy
        if eval_accuracy is None and history:
            evals = [r["eval/accuracy"] for r in history if r.get("eval/accuracy") is not None]
            eval_accuracy = evals[-1] if evals else None
        self.eval_accuracy = eval_accuracy
        return {"episodes": steps_done * self.cfg.rollout_batch, "final": history[-1] if history else {},
                "eval_accuracy": eval_accuracy}

    def after_final(self, run: TrainingRun, final_dir: Path) -> None:
        if self.value_head is not None:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()},
                      str(final_dir / "value_head.safetensors"))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def train_rlvr(cfg: RLVRConfig, model, tokenizer, data: Sequence[dict], *, eval_data: Sequence[dict] | None = None,
               reward_model: RewardModel | None = None, resume: bool = True, progress: bool = True,
               save_merged: bool = True, time_limit_s: float | None = None,
               start: str | None = None, reward_control: str | None = None) -> dict[str, Any]:
    """Train ``model`` with RLVR (``cfg.algorithm``: "ppo" Tülu 3, "grpo" Tülu 3.1).

    Args:
        cfg: an :class:`RLVRConfig` (re-validated here). ``cfg.lora`` attaches adapters unless the
            model already has them; the reference policy is the adapter-disabled network.
        model, tokenizer: a causal LM (e.g. from ``tulu_lab.models.load_model``) and its tokenizer
            (with a chat template; left padding). Adapters are attached to ``model`` in place (as peft
            does); the trained model is in ``output_dir/final``.
        data: RLVR rows ``{"messages", "ground_truth", "dataset"}``.
        eval_data: optional held-out rows; greedy accuracy every ``cfg.eval_every`` steps and at the end
            (``"eval/accuracy"`` in the metrics).
        reward_model: optional ``(prompts, responses) -> list[float]``; its scores x
            ``cfg.reward_model_weight`` are added to the verifiable reward (needs a weight > 0).
        resume: continue from the newest checkpoint in ``cfg.output_dir``; False starts afresh and
            deletes this run's old checkpoints there. A folder holding a run of other settings is
            refused with ``RunMismatchError`` (see ``training.begin_run``).
        progress: a tqdm bar over steps (process 0 only).
        save_merged: also write the merged model into ``output_dir/final`` (adapters are always saved).
        time_limit_s: stop before ``cfg.num_steps`` where one more step, as long as the last one, would
            end past this many seconds of this call (at least one step runs); a checkpoint is written
            there, so a later call can continue. The schedule still spans ``cfg.num_steps``.
        start: the identity of the starting weights (``training.source_fingerprint`` of their
            folder); default: a hash of the weights and the tokenizer.
        reward_control: None (the reward as configured) or "shuffled", the random-reward control
            (:func:`shuffled_scores`); recorded in the run's identity, so it is a run of its own.

    Returns:
        ``{"output_dir", "final_dir", "steps" (completed), "episodes", "stopped_early", "metrics" (every
        step's record), "final" (the last record), "eval_accuracy" (last held-out accuracy or None),
        "model" (the trained policy, adapters enabled)}``.
        Metrics go to
        ``cfg.metrics_path`` as JSONL, one line per step.
    """
    cfg = dataclasses.replace(cfg)  # re-runs the config validation (fields may have been set after creation)
    rows = check_rlvr_rows(data, "data")
    eval_rows = check_rlvr_rows(eval_data, "eval_data") if eval_data is not None else None
    if reward_model is not None and cfg.reward_model_weight == 0:
        raise ValueError("train_rlvr: a reward_model was given but cfg.reward_model_weight is 0; "
                         "set reward_model_weight > 0 (the paper's ablation) or drop the reward model")
    if reward_control is not None and reward_control not in REWARD_CONTROLS:
        raise ValueError(f"train_rlvr: reward_control must be None or one of {list(REWARD_CONTROLS)}, "
                         f"got {reward_control!r}")
    if reward_model is None and cfg.reward_model_weight > 0:
        raise ValueError(f"train_rlvr: cfg.reward_model_weight is {cfg.reward_model_weight} but no reward_model was given")

    # every check that can fail runs before the model is touched
    prompt_texts = [format_prompt(r["messages"], tokenizer) for r in rows]
    prompt_lens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in prompt_texts]
    usable = [i for i, n in enumerate(prompt_lens) if n <= cfg.max_prompt_len]
    if not usable:
        raise ValueError(f"train_rlvr: every prompt is longer than max_prompt_len = {cfg.max_prompt_len} tokens")
    identity = run_identity(cfg, start=start_identity(start, model, tokenizer), data=data_fingerprint(rows),
                            eval_data=data_fingerprint(eval_rows) if eval_rows is not None else None,
                            **({"reward_control": reward_control} if reward_control else {}))
    accelerator = make_accelerator(cfg)
    world = World.from_accelerator(accelerator)
    if cfg.prompts_per_step % world.size:
        raise ValueError(f"train_rlvr: prompts_per_step = {cfg.prompts_per_step} is not divisible by the "
                         f"{world.size} processes (each process samples whole groups)")

    stage = RLVRStage(cfg, tokenizer, rows, prompt_texts, usable, eval_rows, reward_model, world,
                      reward_control=reward_control)
    summary, run = run_training(stage, model, tokenizer, identity=identity, resume=resume, progress=progress,
                                time_limit_s=time_limit_s, save_merged=save_merged, accelerator=accelerator)
    return {"output_dir": str(cfg.output_dir), "final_dir": summary["final_dir"] if run.is_main else None,
            "steps": summary["steps"], "episodes": summary["episodes"], "stopped_early": summary["stopped_early"],
            "metrics": stage.history, "final": summary["final"], "eval_accuracy": stage.eval_accuracy,
            "model": run.model}


def _distributed_accuracy(model, tokenizer, rows, cfg, world: World) -> float:
    share = rows[world.rank::world.size]
    correct = evaluate_accuracy(model, tokenizer, share, max_new_tokens=cfg.max_new_tokens,
                                batch_size=MAX_GENERATION_BATCH)[1] if share else []
    totals = world.sum(torch.tensor([float(sum(correct)), float(len(correct))]))
    return float(totals[0] / totals[1])


def _step_record(cfg, step, batch: RolloutBatch, info, stats: UpdateStats, world: World, learning_rate) -> dict:
    """The step's metrics over every process (TRL GRPOTrainer names where one exists)."""
    scores = batch.scores.double()
    lengths = torch.tensor(info["lengths"], dtype=torch.float64)
    k = batch.group_size
    grouped = scores.view(-1, k)
    zero_std = (grouped.max(1).values == grouped.min(1).values).double() if k > 1 else torch.zeros(0)
    # the verifier's own scores (differ from ``scores`` only under a reward control)
    verified = info.get("verifiable_scores", batch.scores).double()
    verified_grouped = verified.view(-1, k)
    verified_zero_std = ((verified_grouped.max(1).values == verified_grouped.min(1).values).double()
                         if k > 1 else torch.zeros(0))
    mask = batch.response_mask
    sums = world.sum(torch.stack([
        scores.sum(), (scores ** 2).sum(), torch.tensor(float(len(scores)), dtype=torch.float64),
        torch.tensor(float(sum(info["correct"])), dtype=torch.float64), lengths.sum(),
        torch.tensor(float(sum(not s for s in info["stopped"])), dtype=torch.float64),
        zero_std.sum(), torch.tensor(float(len(zero_std)), dtype=torch.float64),
        verified.sum(), verified_zero_std.sum(),
    ]))
    (total, total_sq, n, n_correct, total_len, n_clipped, n_zero_std, n_groups, verified_total,
     n_verified_zero_std) = sums.tolist()
    mean = total / n
    std = math.sqrt(max(total_sq - n * mean ** 2, 0.0) / (n - 1)) if n > 1 else 0.0
    kl = stats.kl
    entropy = stats.entropy
    if batch.old_logprobs is not None:  # the score pass saw every sequence: use it
        if batch.ref_logprobs is not None:
            per_token = kl_estimate(batch.old_logprobs, batch.ref_logprobs, cfg.kl_estimator)
            kl_sum = world.sum(torch.stack([masked_sum(per_token, mask).double(), mask.sum().double()]))
            kl = float(kl_sum[0] / kl_sum[1].clamp(min=1))
        if batch.entropy is not None:  # GRPO takes its rollout log-probs from the sampler, without entropy
            ent = world.sum(torch.stack([masked_sum(batch.entropy, mask).double(), mask.sum().double()]))
            entropy = float(ent[0] / ent[1].clamp(min=1))
    record = {
        "step": step + 1,
        "episodes": (step + 1) * cfg.rollout_batch,
        "reward": mean,
        "reward_std": std,
        "accuracy": n_correct / n,
        "kl": kl,
        "entropy": entropy,
        "completions/mean_length": total_len / n,
        "completions/clipped_ratio": n_clipped / n,
        "frac_reward_zero_std": n_zero_std / n_groups if n_groups else None,
        "verifiable_reward": verified_total / n,
        "frac_verifiable_zero_std": n_verified_zero_std / n_groups if n_groups else None,
        "clip_ratio": stats.clip_ratio,
        "loss": stats.loss,
        "policy_loss": stats.policy_loss,
        "learning_rate": learning_rate,
        "trained_sequences": stats.trained_sequences,
    }
    if cfg.algorithm == "ppo":
        record["value_loss"] = stats.value_loss
        record["value_clip_ratio"] = stats.value_clip_ratio
    return record


def read_metrics(path: str | Path) -> list[dict]:
    """The JSONL metrics a run wrote (``cfg.metrics_path``)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = [
    "MicroBatch", "RolloutBatch", "UpdateStats", "World", "check_rlvr_rows", "compute_advantages",
    "evaluate_accuracy", "forward_response", "make_micro_batch", "make_value_head", "read_metrics",
    "rlvr_update", "rollout", "score_rollout", "shuffled_scores", "train_rlvr", "whiten_global",
]
