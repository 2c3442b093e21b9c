"""Supervised fine-tuning, the first stage of Tülu 3 (paper section 4).

    summary = train_sft(SFTConfig.cpu_preset(max_steps=100), model, tokenizer, rows)
    model, tokenizer = load_model(summary["final_dir"])          # the next stage starts here

Read top to bottom: encode the conversations (loss on assistant tokens only), order them per epoch,
then for every optimiser step run this process's micro-batches, accumulate, clip, step, log and
checkpoint; at the end write ``output_dir/final`` with the LoRA adapters merged in.

The loss, and how "sum" is normalised
-------------------------------------
Per micro-batch the summed next-token NLL over its label tokens, ``S_m`` (``losses.sft_loss``), is
turned into the tensor handed to ``accelerator.backward``:

* ``"sum"`` (Tülu 3): ``S_m / per_device_batch``. accelerate divides it by ``gradient_accumulation``
  and data-parallel training averages gradients over the ``num_processes`` processes, so the update
  is the gradient of ``sum over every label token of the global batch / effective_batch``: a constant
  divisor (examples per optimiser step), never the batch's token count. Every token weighs the same
  within a step and across steps, and the update does not depend on how the global batch is split
  into micro-batches or processes (``tests/test_distributed.py`` checks 2 processes against 1).
  open-instruct's finetune.py backpropagates the per-micro-batch token sum through
  ``accelerator.backward`` (divided by gradient_accumulation) under DDP (divided by the number of
  processes): with the paper's ``per_device_batch=1`` that is exactly this divisor.
* ``"mean"``: ``S_m / (label tokens of micro-batch m)``, i.e. the mean over micro-batch means (what
  open-instruct's ``--reduce_loss mean`` and the Hugging Face Trainer did): short and long examples
  weigh differently depending on which micro-batch they land in.

Metrics (one JSON line per optimiser step in ``cfg.metrics_path``): ``loss`` is the mean NLL per label
token over the global batch whatever the reduction (comparable across runs); ``objective`` is the
quantity whose gradient was taken; plus ``learning_rate``, ``tokens`` (non-padding input tokens),
``label_tokens``, ``step_time``, ``epoch`` (fractional), ``step``.

Where this departs from the paper / open-instruct
-------------------------------------------------
* LoRA or QLoRA (``cfg.lora``; ``quantize_4bit`` expects a model loaded with ``quant="nf4"``) as well
  as full fine-tuning; the paper trained every weight.
* "sum" divides by the constant ``effective_batch`` (see above); open-instruct's divisor is
  ``gradient_accumulation x num_processes`` whatever ``per_device_batch`` is (equal at the paper's 1).
* Each epoch uses a fresh permutation drawn from (seed, epoch), and the last incomplete global batch of
  an epoch is skipped (every step has ``effective_batch`` examples; a different remainder is skipped
  each epoch). open-instruct keeps the partial batch.
* ``max_steps``, when set, overrides ``epochs`` (the data are cycled with new permutations).
* Dropout RNG is reseeded at every optimiser step from (seed, step, process), so resuming from a
  checkpoint reproduces an uninterrupted run exactly on every process.
* Examples left without any label after truncation to ``max_seq_len`` are dropped before training
  and counted (``dropped_examples``); open-instruct filters them the same way.
* ``loss`` is logged as the per-token mean (open-instruct logs the summed loss / accumulation steps).

The loop, the run folder (``run.json``), checkpoints, resume and launching with several processes
are the trainer's: see ``tulu_lab.training``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from tulu_lab.chat import encode_sft_example, pad_batch, validate_messages
from tulu_lab.config import SFTConfig
from tulu_lab.losses import sft_loss
from tulu_lab.training import (
    EpochStage,
    TrainingRun,
    autocast,
    scored_positions,
    train_epochs,
)


# --------------------------------------------------------------------------------------------------
# Data: conversations -> token ids with assistant-only labels
# --------------------------------------------------------------------------------------------------

def encode_sft_data(data: Sequence[dict], tokenizer, max_seq_len: int) -> tuple[list[dict], int]:
    """Encode ``[{"messages": [...]}, ...]``; returns (examples with labels, number dropped).

    Malformed rows raise ValueError naming the row index and field. A row is dropped (and counted)
    when truncation to ``max_seq_len`` leaves none of its assistant tokens.
    """
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Sequence):
        raise TypeError(f"data must be a list of {{'messages': [...]}} rows, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data is empty: SFT needs at least one {'messages': [...]} row")
    examples, dropped = [], 0
    for i, row in enumerate(data):
        if not isinstance(row, dict) or "messages" not in row:
            raise ValueError(f"data[{i}]: expected a dict with a 'messages' field, got {row!r:.80}")
        validate_messages(row["messages"], where=f"data[{i}]['messages']")
        if not any(m["role"] == "assistant" for m in row["messages"]):
            raise ValueError(f"data[{i}]['messages']: no assistant message, nothing to learn from")
        example = encode_sft_example(row["messages"], tokenizer, max_seq_len)
        if example["has_labels"]:
            examples.append(example)
        else:
            dropped += 1
    return examples, dropped


def micro_batch_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str,
                     per_device_batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tensor to backpropagate for one micro-batch, with its summed NLL and label-token count.

    "sum": ``S / per_device_batch`` (accelerate and data parallelism then divide by accumulation and
    processes: the update is the global token sum / effective_batch). "mean": ``S / tokens``.
    """
    nll_sum, n_tokens = sft_loss(logits, labels, reduction="sum")
    if reduction == "sum":
        loss = nll_sum / per_device_batch
    else:
        loss = nll_sum / n_tokens.clamp(min=1)
    return loss, nll_sum.detach(), n_tokens


# --------------------------------------------------------------------------------------------------
# The stage: this process's micro-batches of each optimiser step, accumulated
# --------------------------------------------------------------------------------------------------

class SFTStage(EpochStage):
    """Per optimiser step: this process's micro-batches of the epoch's order, each a forward pass on
    the label positions and a backward pass of its share of the loss; then clip and step."""

    name = "SFT"

    def __init__(self, cfg: SFTConfig, examples: list[dict], dropped: int, pad_id: int):
        super().__init__(cfg, len(examples), dropped)
        self.examples, self.pad_id = examples, pad_id
        self.tokens_seen = 0

    def before_resume(self, run: TrainingRun) -> None:
        self.report_dropped(run, f"with no assistant token left after truncation to max_seq_len={self.cfg.max_seq_len}")

    def step(self, run: TrainingRun, step: int, learning_rate: float) -> dict[str, Any]:
        cfg, model = self.cfg, run.model
        # nll sum, label tokens, input tokens, objective contribution: summed over processes below
        totals = torch.zeros(4, dtype=torch.float64)
        for micro in self.micro_batches(run, step):
            batch = pad_batch([self.examples[i] for i in micro], self.pad_id, side="right")
            batch = {k: v.to(run.device) for k, v in batch.items()}
            with run.accelerator.accumulate(model):
                keep = scored_positions(batch["labels"])  # no LM head on the prompt
                with autocast(cfg, run.device):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   use_cache=False, logits_to_keep=keep).logits
                loss, nll_sum, n_tokens = micro_batch_loss(logits, batch["labels"][:, -keep:], cfg.loss_reduction,
                                                           cfg.per_device_batch)
                self.backward(run, loss)
            micro_batches_per_step = cfg.gradient_accumulation * cfg.num_processes
            objective_part = (float(nll_sum) / cfg.effective_batch if cfg.loss_reduction == "sum"
                              else float(nll_sum) / max(int(n_tokens), 1) / micro_batches_per_step)
            totals += torch.tensor([float(nll_sum), float(n_tokens), float(batch["attention_mask"].sum()),
                                    objective_part], dtype=torch.float64)
            del logits, loss
        totals = run.sum(totals)
        self.tokens_seen += int(totals[2])
        return {
            "step": step + 1,
            "epoch": self.epoch(step),
            "loss": float(totals[0] / totals[1].clamp(min=1)),
            "objective": float(totals[3]),
            "learning_rate": learning_rate,
            "tokens": int(totals[2]),
            "label_tokens": int(totals[1]),
        }

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.4f}", "lr": f"{record['learning_rate']:.2e}"}

    def summary(self, run: TrainingRun, steps_done: int, last_record: dict[str, Any]) -> dict[str, Any]:
        return {"final_loss": last_record.get("loss"), "steps_per_epoch": self.steps_per_epoch,
                "examples": len(self.examples), "dropped_examples": self.dropped,
                "effective_batch": self.cfg.effective_batch, "loss_reduction": self.cfg.loss_reduction,
                "tokens": self.tokens_seen}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def train_sft(cfg: SFTConfig, model, tokenizer, data: Sequence[dict], *, resume: bool = True,
              progress: bool = True, start: str | None = None) -> dict[str, Any]:
    """Supervised fine-tuning with assistant-only loss, as in Tülu 3.

    Args:
        cfg: the run's settings (``SFTConfig.for_scale(...)`` or ``SFTConfig.cpu_preset(...)``).
        model: a causal LM from ``tulu_lab.models.load_model`` (``quant="nf4"`` for QLoRA); LoRA
            adapters from ``cfg.lora`` are attached unless it already has them.
        tokenizer: its tokenizer; the Tülu template is rendered by ``tulu_lab.chat`` directly.
        data: ``[{"messages": [{"role": ..., "content": ...}, ...]}, ...]``.
        resume: continue from the newest checkpoint in ``cfg.output_dir`` if there is one; with
            False this run's earlier checkpoints there are deleted and training starts afresh.
            A folder holding a run of other settings (another config, starting model or data, see
            ``training.begin_run``) is refused with ``RunMismatchError`` either way: nothing of it is
            resumed or deleted.
        progress: show a tqdm bar (main process only).
        start: the identity of the starting weights (``training.source_fingerprint`` of the folder
            they were loaded from); default: a hash of the weights and the tokenizer.

    Returns:
        A summary dict: ``final_loss``, ``steps``, ``start_step``, ``steps_per_epoch``, ``examples``,
        ``dropped_examples``, ``effective_batch``, ``tokens`` (non-padding input tokens this call
        processed), ``wall_time_s``, ``output_dir``, ``final_dir`` (merged model for ``load_model``),
        ``metrics_path``, and ``model`` (the trained model object; left out of summary.json).
    """
    if not isinstance(cfg, SFTConfig):
        raise TypeError(f"cfg must be an SFTConfig, got {type(cfg).__name__}")
    examples, dropped = encode_sft_data(data, tokenizer, cfg.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stage = SFTStage(cfg, examples, dropped, pad_id)
    return train_epochs(stage, model, tokenizer, data, start=start, resume=resume, progress=progress)
