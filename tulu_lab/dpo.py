"""Direct preference optimisation, the second stage of Tülu 3 (paper section 5): length-normalised DPO.

    summary = train_dpo(DPOConfig.cpu_preset(max_steps=60), model, tokenizer, pairs)
    preference_accuracy(summary["model"], tokenizer, held_out_pairs, beta=5.0, loss_type="dpo_norm")

A pair is ``{"chosen": messages, "rejected": messages}``: two conversations with the same prompt (every
message but the last) and different final assistant answers. Read top to bottom: encode the pairs,
compute the reference log-probs (once, before training, when ``cache_reference``), then for every
optimiser step run this process's micro-batches (chosen and rejected in one forward pass), take the
DPO loss from ``losses.dpo_loss``, accumulate, clip, step, log and checkpoint; at the end write
``output_dir/final`` with the LoRA adapters merged in.

The reference policy
--------------------
* With LoRA (the CPU preset) the reference is the SAME network with its adapters disabled
  (``with model.disable_adapter():``): the model the adapters were attached to, i.e. the SFT model
  when DPO starts from SFT's merged ``final`` folder. No second copy of the weights exists.
* Full fine-tuning (``cfg.lora is None``) with ``cache_reference=True`` computes the reference
  log-probs with the model itself before its first update, so no copy is needed either.
  With ``cache_reference=False`` a frozen deep copy of the starting model is kept as the reference
  (twice the weight memory; on one process or under DDP only: a copy of a sharded FSDP/DeepSpeed
  model is refused, use the cache there).

Metrics (one JSON line per optimiser step, TRL's names): ``loss``, ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``,
``logps/rejected`` (summed response log-probs), ``learning_rate``, ``tokens``, ``step_time``,
``epoch``, ``step``; each averaged over the global batch.

Where this departs from the paper / open-instruct
-------------------------------------------------
* LoRA/QLoRA with the adapter-free network as reference; the paper trained every weight against a
  separate frozen SFT model.
* The loss of each micro-batch is the mean over its pairs; accelerate divides by the accumulation
  steps and data parallelism averages over processes, so the update is that of the mean over the
  global batch (micro-batches have equal size here: the last incomplete global batch of an epoch is
  skipped, and each epoch is a fresh permutation drawn from (seed, epoch)).
* ``max_steps``, when set, overrides ``epochs``. Dropout RNG is reseeded every step from
  (seed, step, process) so that resuming is exact.
* A pair whose chosen or rejected response is cut away entirely by ``max_seq_len`` is dropped and
  counted (``dropped_pairs``). Every assistant turn is scored, as in open-instruct's encoding; with a
  shared multi-turn history the earlier turns cancel between chosen and rejected for "dpo" and
  nearly so for "dpo_norm".
* The reference cache is recomputed at the start of every call (also on resume) rather than stored.
* ``share_prompt`` (default): each pair is one row, prompt | chosen | rejected, with a 4D attention
  mask and position ids that keep the two answers apart, so the prompt runs through the network
  once; the sums equal those of two separate rows (tested). Needs sdpa or eager attention; with
  flash attention set ``share_prompt=False``.

The loop, the run folder (``run.json``), checkpoints, resume and launching with several processes
are the trainer's: see ``tulu_lab.training``.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from tulu_lab.chat import encode_sft_example, pad_batch, validate_messages
from tulu_lab.config import DPOConfig
from tulu_lab.losses import dpo_loss, logprob_sum, sequence_logprobs
from tulu_lab.training import (
    EpochStage,
    TrainingRun,
    autocast,
    epoch_order,
    scored_positions,
    step_micro_batches,
    train_epochs,
)


# --------------------------------------------------------------------------------------------------
# Data: preference pairs -> (chosen, rejected) token ids with assistant-only labels
# --------------------------------------------------------------------------------------------------

def encode_preference_data(pairs: Sequence[dict], tokenizer, max_seq_len: int) -> tuple[list[tuple[dict, dict]], int]:
    """Encode ``[{"chosen": messages, "rejected": messages}, ...]``; returns (encoded pairs, number dropped).

    Malformed pairs raise ValueError naming the pair index and field: both conversations must be
    valid, end with an assistant message and share every message before it.
    """
    if isinstance(pairs, (str, bytes, dict)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a list of {{'chosen': [...], 'rejected': [...]}} rows, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError("pairs is empty: DPO needs at least one {'chosen': [...], 'rejected': [...]} pair")
    encoded, dropped = [], 0
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise ValueError(f"pairs[{i}]: expected a dict with 'chosen' and 'rejected', got {pair!r:.80}")
        for field in ("chosen", "rejected"):
            if field not in pair:
                raise ValueError(f"pairs[{i}]: missing field {field!r} (a list of messages)")
            validate_messages(pair[field], where=f"pairs[{i}][{field!r}]")
            if pair[field][-1]["role"] != "assistant":
                raise ValueError(f"pairs[{i}][{field!r}]: the last message must be the assistant's answer, "
                                 f"got role {pair[field][-1]['role']!r}")
        if list(pair["chosen"][:-1]) != list(pair["rejected"][:-1]):
            raise ValueError(f"pairs[{i}]: 'chosen' and 'rejected' must share the prompt "
                             f"(every message before the final assistant answer)")
        chosen = encode_sft_example(pair["chosen"], tokenizer, max_seq_len)
        rejected = encode_sft_example(pair["rejected"], tokenizer, max_seq_len)
        if chosen["has_labels"] and rejected["has_labels"]:
            encoded.append((chosen, rejected))
        else:
            dropped += 1
    return encoded, dropped


def _pair_batch(encoded: list[tuple[dict, dict]], indices: Sequence[int], pad_id: int, device,
                share_prompt: bool = False) -> dict:
    """One padded batch of the pairs ``indices``; ``_summed_logps`` reads either layout.

    Unshared: the chosen sequences first, then their rejected sequences (2k rows). Shared
    (``share_prompt``): one row per pair, ``prompt | chosen | rejected``, with a 4D attention mask and
    position ids that make it compute exactly what the two separate rows would, while the prompt
    goes through the network once (about a third fewer tokens for short answers).
    """
    if not share_prompt:
        rows = [encoded[i][0] for i in indices] + [encoded[i][1] for i in indices]
        batch = pad_batch(rows, pad_id, side="right")
        batch["tokens"] = batch["attention_mask"].sum()
        return {k: v.to(device) for k, v in batch.items()}
    packed = [_shared_prompt_row(*encoded[i]) for i in indices]
    width = max(len(row["input_ids"]) for row in packed)
    fill = {"input_ids": pad_id, "labels": -100, "position_ids": 0, "segments": PAD_SEGMENT}
    batch = {key: torch.stack([torch.cat([row[key], torch.full((width - len(row[key]),), value, dtype=torch.long)])
                               for row in packed]) for key, value in fill.items()}
    batch["allowed"] = torch.stack([_shared_prompt_mask(row, width) for row in packed]).unsqueeze(1)
    batch["tokens"] = torch.tensor(sum(len(row["input_ids"]) for row in packed))
    return {k: v.to(device) for k, v in batch.items()}


# segment ids of a shared-prompt row: which part each position belongs to
PROMPT_SEGMENT, CHOSEN_SEGMENT, REJECTED_SEGMENT, PAD_SEGMENT = 0, 1, 2, 3


def _shared_prompt_row(chosen: dict, rejected: dict) -> dict:
    """``prompt | chosen answer | last prompt token again | rejected answer`` as one row.

    The shared prompt is the common token prefix before either sequence's first label (earlier
    scored turns of a multi-turn history stay in both answers, so the sums are unchanged). The last
    prompt token is repeated at the start of the rejected part: its output predicts the first
    rejected token, as the chosen part's first token is predicted from the original.
    """
    c_ids, r_ids = chosen["input_ids"], rejected["input_ids"]
    first_label = min(int((chosen["labels"] != -100).nonzero()[0]), int((rejected["labels"] != -100).nonzero()[0]))
    shared = int((c_ids[:first_label] == r_ids[:first_label]).long().cumprod(0).sum())  # common prefix
    start = max(shared - 1, 0)  # where the rejected part begins in its own sequence
    return {
        "input_ids": torch.cat([c_ids, r_ids[start:]]),
        "labels": torch.cat([chosen["labels"], torch.tensor([-100]), rejected["labels"][start + 1:]]),
        "position_ids": torch.cat([torch.arange(len(c_ids)), torch.arange(start, len(r_ids))]),
        "segments": torch.cat([torch.full((shared,), PROMPT_SEGMENT),
                               torch.full((len(c_ids) - shared,), CHOSEN_SEGMENT),
                               torch.full((len(r_ids) - start,), REJECTED_SEGMENT)]),
        "shared": shared,
    }


def _shared_prompt_mask(row: dict, width: int) -> torch.Tensor:
    """(width, width) bool, True where query i may attend to key j: causal, the prompt is seen by both
    answers, an answer never sees the other, and the rejected part sees its repeated last prompt token
    instead of the original. Padding attends to padding (no empty rows)."""
    seg = torch.full((width,), PAD_SEGMENT)
    seg[:len(row["segments"])] = row["segments"]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_part = seg[:, None] == seg[None, :]
    prompt_key = (seg == PROMPT_SEGMENT)[None, :].expand(width, width).clone()
    prompt_key[seg == PAD_SEGMENT] = False
    if row["shared"] > 0:
        prompt_key[seg == REJECTED_SEGMENT, row["shared"] - 1] = False
    return causal & (same_part | prompt_key)


def _summed_logps(model, batch: dict, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed response log-probs, response lengths): chosen of every pair first, then rejected."""
    device = batch["input_ids"].device
    keep = scored_positions(batch["labels"])  # no LM head on the shared prompt
    shared = "allowed" in batch
    inputs = (dict(attention_mask=_attention_bias(model, batch["allowed"]), position_ids=batch["position_ids"])
              if shared else dict(attention_mask=batch["attention_mask"]))
    with autocast(cfg, device):
        logits = model(input_ids=batch["input_ids"], use_cache=False, logits_to_keep=keep, **inputs).logits
    logps, mask = sequence_logprobs(logits, batch["labels"][:, -keep:])
    if not shared:
        return logprob_sum(logps, mask), mask.sum(-1)
    segments = batch["segments"][:, -keep + 1:]
    parts = [mask & (segments == part) for part in (CHOSEN_SEGMENT, REJECTED_SEGMENT)]
    return torch.cat([logprob_sum(logps, m) for m in parts]), torch.cat([m.sum(-1) for m in parts])


def attention_implementation(model) -> str:
    """The attention kernel a (possibly wrapped) transformers model runs."""
    inner = getattr(model, "module", model)  # DDP / accelerate wrappers
    return getattr(getattr(inner, "config", None), "_attn_implementation", None) or "eager"


def _attention_bias(model, allowed: torch.Tensor) -> torch.Tensor:
    """The 4D mask in the form the model's attention takes: bool for sdpa, additive float for eager."""
    implementation = attention_implementation(model)
    if implementation == "sdpa":
        return allowed
    if implementation != "eager":
        raise ValueError(f"share_prompt needs 'sdpa' or 'eager' attention (a custom 4D mask); the model runs "
                         f"{implementation!r}: set share_prompt=False")
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


class _Reference:
    """The reference policy: the adapter-free network, or a frozen copy for full fine-tuning."""

    def __init__(self, model, accelerator, copy_model=None):
        self.model = model                      # the (possibly wrapped) training model
        self.unwrapped = accelerator.unwrap_model(model)
        self.copy = copy_model

    @torch.no_grad()
    def logps(self, batch: dict, cfg) -> torch.Tensor:
        if self.copy is not None:
            return _summed_logps(self.copy, batch, cfg)[0]
        was_training = self.unwrapped.training
        self.unwrapped.eval()  # no dropout in the reference
        try:
            if hasattr(self.unwrapped, "disable_adapter"):
                with self.unwrapped.disable_adapter():
                    return _summed_logps(self.model, batch, cfg)[0]
            # full fine-tuning before the first update: the model is its own reference
            return _summed_logps(self.model, batch, cfg)[0]
        finally:
            self.unwrapped.train(was_training)


def reference_cache(reference: _Reference, encoded, cfg, accelerator, pad_id: int, *,
                    only: Sequence[int] | None = None, progress: bool = True) -> torch.Tensor:
    """``(n_pairs, 2)`` summed reference log-probs (chosen, rejected), computed in one pass.

    ``only``: the pairs to score (the others stay NaN); default all. Each process scores every
    ``num_processes``-th of them (all in lockstep, equal counts, so sharded models can run their
    collectives), then the results are gathered to every process.
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    n, world, rank = len(encoded), accelerator.num_processes, accelerator.process_index
    wanted = sorted(set(only)) if only is not None else list(range(n))
    mine = wanted[rank::world]
    per_process = -(-len(wanted) // world)
    mine += mine[-1:] * (per_process - len(mine))  # pad by repeating: identical work counts
    results: list[tuple[int, float, float]] = []
    batches = [mine[i:i + cfg.per_device_batch] for i in range(0, len(mine), cfg.per_device_batch)]
    for indices in tqdm(batches, desc="reference log-probs", unit="batch",
                        disable=not (progress and accelerator.is_main_process)):
        batch = _pair_batch(encoded, indices, pad_id, accelerator.device, cfg.share_prompt)
        sums = reference.logps(batch, cfg).float().cpu()
        k = len(indices)
        results += [(i, float(sums[j]), float(sums[k + j])) for j, i in enumerate(indices)]
    if world > 1:
        results = gather_object(results)
    cache = torch.full((n, 2), float("nan"), dtype=torch.float64)
    for i, chosen, rejected in results:
        cache[i, 0], cache[i, 1] = chosen, rejected
    if torch.isnan(cache[wanted]).any():
        raise RuntimeError("reference cache: some pairs were not scored")
    return cache


def pairs_in_run(n_pairs: int, cfg, total_steps: int) -> list[int]:
    """Every pair index some process trains on in steps ``0 .. total_steps - 1`` (a run shorter than
    an epoch needs reference log-probs for these only)."""
    steps_per_epoch = max(1, n_pairs // cfg.effective_batch)
    used: set[int] = set()
    for step in range(total_steps):
        epoch, position = divmod(step, steps_per_epoch)
        order = epoch_order(n_pairs, cfg.seed, epoch)
        for rank in range(cfg.num_processes):
            for micro in step_micro_batches(order, position, cfg.per_device_batch, cfg.gradient_accumulation,
                                            cfg.num_processes, rank):
                used.update(micro)
    return sorted(used)


# --------------------------------------------------------------------------------------------------
# The stage: reference log-probs once, then this process's pairs of each optimiser step
# --------------------------------------------------------------------------------------------------

class DPOStage(EpochStage):
    """Before training: the reference (the adapter-free network, or a frozen copy) and, with
    ``cache_reference``, every reference log-prob the run needs. Per optimiser step: this process's
    micro-batches of pairs, chosen and rejected in one forward pass, the DPO loss, accumulate, clip, step."""

    name = "DPO"
    examples_name = "pairs"

    def __init__(self, cfg: DPOConfig, encoded, dropped: int, pad_id: int, cache_reference: bool, progress: bool):
        super().__init__(cfg, len(encoded), dropped)
        self.encoded, self.pad_id = encoded, pad_id
        self.cache_reference, self.progress = cache_reference, progress
        self.reference_copy = self.reference = self.cache = None

    def prepare_model(self, model, run: TrainingRun):
        cfg = self.cfg
        if cfg.lora is None and not self.cache_reference:
            if run.accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
                raise ValueError("full-weight DPO without cache_reference keeps a frozen copy of the model, which is "
                                 "not supported under FSDP/DeepSpeed; use cache_reference=True or LoRA")
            self.reference_copy = copy.deepcopy(model).to(run.device).eval().requires_grad_(False)
            if cfg.precision != "bf16":
                self.reference_copy = self.reference_copy.float()
        return model

    def before_resume(self, run: TrainingRun) -> None:
        self.report_dropped(run, f"whose chosen or rejected answer was cut away by max_seq_len={self.cfg.max_seq_len}")
        self.reference = _Reference(run.model, run.accelerator, self.reference_copy)
        # Reference log-probs BEFORE loading a checkpoint: for full fine-tuning the untouched starting
        # weights are the reference (with LoRA the adapters are disabled, so the order does not matter).
        if self.cache_reference:
            self.cache = reference_cache(self.reference, self.encoded, self.cfg, run.accelerator, self.pad_id,
                                         progress=self.progress,
                                         only=pairs_in_run(len(self.encoded), self.cfg, self.total_steps))

    def step(self, run: TrainingRun, step: int, learning_rate: float) -> dict[str, Any]:
        cfg, model, device = self.cfg, run.model, run.device
        # sums over pairs of: loss, chosen reward, rejected reward, accuracy, chosen logp, rejected
        # logp; then pair count and non-padding tokens (summed over processes below)
        totals = torch.zeros(8, dtype=torch.float64)
        for micro in self.micro_batches(run, step):
            batch = _pair_batch(self.encoded, micro, self.pad_id, device, cfg.share_prompt)
            k = len(micro)
            if self.cache is not None:
                ref = self.cache[micro].to(device=device, dtype=torch.float32)
                ref_chosen, ref_rejected = ref[:, 0], ref[:, 1]
            else:
                ref_sums = self.reference.logps(batch, cfg)
                ref_chosen, ref_rejected = ref_sums[:k], ref_sums[k:]
            with run.accelerator.accumulate(model):
                sums, lengths = _summed_logps(model, batch, cfg)
                out = dpo_loss(sums[:k], sums[k:], ref_chosen, ref_rejected, cfg.beta, loss_type=cfg.loss_type,
                               chosen_lengths=lengths[:k], rejected_lengths=lengths[k:])
                self.backward(run, out.loss)
            totals += torch.tensor([
                float(out.losses.detach().sum()), float(out.chosen_rewards.sum()), float(out.rejected_rewards.sum()),
                float((out.chosen_rewards > out.rejected_rewards).float().sum()),
                float(sums[:k].detach().sum()), float(sums[k:].detach().sum()),
                k, float(batch["tokens"])], dtype=torch.float64)
        totals = run.sum(totals)
        n_pairs = float(totals[6])
        return {
            "step": step + 1,
            "epoch": self.epoch(step),
            "loss": float(totals[0]) / n_pairs,
            "rewards/chosen": float(totals[1]) / n_pairs,
            "rewards/rejected": float(totals[2]) / n_pairs,
            "rewards/margins": float(totals[1] - totals[2]) / n_pairs,
            "rewards/accuracies": float(totals[3]) / n_pairs,
            "logps/chosen": float(totals[4]) / n_pairs,
            "logps/rejected": float(totals[5]) / n_pairs,
            "learning_rate": learning_rate,
            "tokens": int(totals[7]),
        }

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.4f}", "acc": f"{record['rewards/accuracies']:.2f}"}

    def summary(self, run: TrainingRun, steps_done: int, last_record: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {"loss_type": cfg.loss_type, "beta": cfg.beta, "final_loss": last_record.get("loss"),
                "final_accuracy": last_record.get("rewards/accuracies"), "steps_per_epoch": self.steps_per_epoch,
                "pairs": len(self.encoded), "dropped_pairs": self.dropped, "effective_batch": cfg.effective_batch,
                "cache_reference": self.cache_reference}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def train_dpo(cfg: DPOConfig, model, tokenizer, pairs: Sequence[dict], *, resume: bool = True,
              progress: bool = True, cache_reference: bool = True, start: str | None = None) -> dict[str, Any]:
    """DPO / length-normalised DPO (``cfg.loss_type``: "dpo_norm", Tülu 3's, or "dpo").

    Args:
        cfg: the run's settings (``DPOConfig.for_scale(...)`` or ``DPOConfig.cpu_preset(...)``).
        model: the starting policy (the SFT model) from ``tulu_lab.models.load_model``; LoRA adapters
            from ``cfg.lora`` are attached unless it already has them. The reference is this network
            with adapters disabled (LoRA), or see the module docstring for full fine-tuning.
        tokenizer: its tokenizer.
        pairs: ``[{"chosen": messages, "rejected": messages}, ...]`` sharing the prompt.
        resume: continue from the newest checkpoint in ``cfg.output_dir``; False deletes this run's
            earlier checkpoints there and starts afresh. A folder holding a run of other settings is
            refused with ``RunMismatchError`` (see ``training.begin_run``).
        progress: show tqdm bars (main process only).
        cache_reference: compute every reference log-prob once before training (open-instruct's
            dpo_tune_cache) instead of a reference forward pass per micro-batch; same loss.
        start: the identity of the starting weights (``training.source_fingerprint`` of their
            folder); default: a hash of the weights and the tokenizer.

    Returns:
        A summary dict: ``final_loss``, ``final_accuracy`` (rewards/accuracies of the last step),
        ``steps``, ``start_step``, ``steps_per_epoch``, ``pairs``, ``dropped_pairs``,
        ``effective_batch``, ``wall_time_s``, ``output_dir``, ``final_dir``, ``metrics_path`` and
        ``model`` (the trained model object; left out of summary.json).
    """
    if not isinstance(cfg, DPOConfig):
        raise TypeError(f"cfg must be a DPOConfig, got {type(cfg).__name__}")
    encoded, dropped = encode_preference_data(pairs, tokenizer, cfg.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stage = DPOStage(cfg, encoded, dropped, pad_id, cache_reference, progress)
    return train_epochs(stage, model, tokenizer, pairs, start=start, resume=resume, progress=progress)


# --------------------------------------------------------------------------------------------------
# Measuring: held-out preference accuracy
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def pair_logprobs(model, tokenizer, pairs: Sequence[dict], *, max_seq_len: int = 2048, batch_size: int = 8,
                  disable_adapters: bool = False, precision: str = "fp32",
                  share_prompt: bool = True) -> dict[str, torch.Tensor]:
    """Summed response log-probs and lengths of every pair under ``model`` (eval mode, no gradient).

    ``disable_adapters`` scores with the LoRA adapters switched off (the DPO reference);
    ``share_prompt`` runs each pair's prompt once (see ``_pair_batch``; same sums). Pairs cut
    away entirely by ``max_seq_len`` raise an error here (an evaluation must score every pair).
    Returns ``{"chosen", "rejected", "chosen_lengths", "rejected_lengths"}``, each ``(n_pairs,)``.
    """
    encoded, dropped = encode_preference_data(pairs, tokenizer, max_seq_len)
    if dropped:
        raise ValueError(f"{dropped} pairs have no response token left after truncation to "
                         f"max_seq_len={max_seq_len}; raise max_seq_len")
    if disable_adapters and not hasattr(model, "disable_adapter"):
        raise ValueError("disable_adapters=True needs a model with LoRA adapters (a peft PeftModel)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    precision_cfg = SimpleNamespace(precision=precision)  # what training.autocast reads
    was_training = model.training
    model.eval()
    chosen, rejected, chosen_len, rejected_len = [], [], [], []
    try:
        for start in range(0, len(encoded), batch_size):
            indices = list(range(start, min(start + batch_size, len(encoded))))
            batch = _pair_batch(encoded, indices, pad_id, device, share_prompt)
            if disable_adapters:
                with model.disable_adapter():
                    sums, lengths = _summed_logps(model, batch, precision_cfg)
            else:
                sums, lengths = _summed_logps(model, batch, precision_cfg)
            k = len(indices)
            chosen.append(sums[:k].float().cpu())
            rejected.append(sums[k:].float().cpu())
            chosen_len.append(lengths[:k].cpu())
            rejected_len.append(lengths[k:].cpu())
    finally:
        model.train(was_training)
    return {"chosen": torch.cat(chosen), "rejected": torch.cat(rejected),
            "chosen_lengths": torch.cat(chosen_len), "rejected_lengths": torch.cat(rejected_len)}


def preference_accuracy(model, tokenizer, pairs: Sequence[dict], beta: float, loss_type: str = "dpo_norm", *,
                        reference_model=None, max_seq_len: int = 2048, batch_size: int = 8,
                        precision: str = "fp32", share_prompt: bool = True) -> float:
    """Fraction of pairs whose implicit reward margin is > 0 (ties count as wrong).

    The implicit reward is ``beta * (logp_policy - logp_ref)`` of each response (per-token means for
    "dpo_norm", sums for "dpo"); the reference is ``model`` with its LoRA adapters disabled, or
    ``reference_model`` when given (full fine-tuning). A policy whose adapters are still at their
    initialisation (LoRA B = 0) equals its reference: every margin is 0 and the accuracy is 0.
    """
    from tulu_lab.losses import DPO_LOSS_TYPES

    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {list(DPO_LOSS_TYPES)}, got {loss_type!r}")
    if reference_model is None and not hasattr(model, "disable_adapter"):
        raise ValueError("preference_accuracy: the model has no LoRA adapters to disable; "
                         "pass reference_model= (the starting model) for a fully fine-tuned policy")
    options = dict(max_seq_len=max_seq_len, batch_size=batch_size, precision=precision, share_prompt=share_prompt)
    policy = pair_logprobs(model, tokenizer, pairs, **options)
    if reference_model is not None:
        ref = pair_logprobs(reference_model, tokenizer, pairs, **options)
    else:
        ref = pair_logprobs(model, tokenizer, pairs, disable_adapters=True, **options)
    out = dpo_loss(policy["chosen"], policy["rejected"], ref["chosen"], ref["rejected"], beta,
                   loss_type=loss_type, chosen_lengths=policy["chosen_lengths"],
                   rejected_lengths=policy["rejected_lengths"])
    return float((out.margins > 0).float().mean())
