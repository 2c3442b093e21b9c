"""The SFT loop on a tiny random Llama: learning, loss reductions, label masking, errors, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tulu_lab.config import LoraSettings, SFTConfig  # noqa: E402
from tulu_lab.sft import encode_sft_data, micro_batch_loss, train_sft  # noqa: E402

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from sft_resume_script import load_tiny, resume_config, resume_data  # noqa: E402


def rows(n_extra_words: bool = True) -> list[dict]:
    """16 short arithmetic conversations whose answers have different lengths."""
    data = []
    for a in range(2, 6):
        for b in range(3, 7):
            tail = " So the answer is clear." if n_extra_words and (a * b) % 2 else ""
            data.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                      {"role": "assistant", "content": f"{a} + {b} = {a + b}.{tail}\n#### {a + b}"}]})
    return data


def config(tmp_path, name="run", **overrides) -> SFTConfig:
    values = dict(output_dir=str(tmp_path / name), seed=3, learning_rate=3e-3, warmup_ratio=0.0,
                  per_device_batch=4, gradient_accumulation=1, max_seq_len=64, precision="fp32",
                  lora=None, epochs=1, checkpoint_every=0)
    return SFTConfig(**{**values, **overrides})


def metrics(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def without_time(records):
    return [{k: v for k, v in r.items() if k != "step_time"} for r in records]


def trained_weights(summary) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in summary["model"].named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [None, LoraSettings(r=8, alpha=16, dropout=0.0)], ids=["full", "lora"])
def test_loss_decreases_on_a_memorisation_set(tiny_model_dir, tmp_path, lora):
    model, tokenizer = load_tiny(tiny_model_dir)
    cfg = config(tmp_path, epochs=8, learning_rate=3e-3 if lora is None else 1e-2, lora=lora)
    summary = train_sft(cfg, model, tokenizer, rows(), progress=False)
    losses = [r["loss"] for r in metrics(cfg.metrics_path)]
    assert len(losses) == summary["steps"] == 32
    assert summary["final_loss"] == losses[-1]
    # a random tiny model learns slowly through rank-8 adapters alone (its LM head stays random)
    assert sum(losses[-4:]) / 4 < (0.6 if lora is None else 0.92) * sum(losses[:4]) / 4, losses
    record = metrics(cfg.metrics_path)[0]
    assert set(record) >= {"loss", "learning_rate", "tokens", "step_time", "epoch", "step"}
    assert record["learning_rate"] == pytest.approx(cfg.learning_rate)  # no warmup: full rate at once
    assert Path(summary["final_dir"], "config.json").is_file()


def test_final_folder_loads_as_the_trained_model(tiny_model_dir, tmp_path):
    from tulu_lab.models import load_model

    model, tokenizer = load_tiny(tiny_model_dir)
    cfg = config(tmp_path, epochs=2, learning_rate=1e-2, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    summary = train_sft(cfg, model, tokenizer, rows(), progress=False)
    merged, _ = load_model(summary["final_dir"], dtype="fp32", verbose=False)
    assert not hasattr(merged, "peft_config")  # a plain model folder, adapters folded in
    ids = torch.tensor([tokenizer("<|user|>\nWhat is 3 + 4?\n<|assistant|>\n")["input_ids"]])
    with torch.no_grad():
        trained = summary["model"](input_ids=ids).logits
        reloaded = merged(input_ids=ids).logits
        base = load_tiny(tiny_model_dir)[0](input_ids=ids).logits
    # merged weights are stored in bf16: close to the trained model, clearly away from the base
    assert (reloaded - trained).abs().max() < 0.1 * (base - trained).abs().max()


def test_sum_does_not_depend_on_the_micro_batch_split_and_mean_does(tiny_model_dir, tmp_path):
    """Same global batch of 4, split as 4x1 or 1x4 micro-batches, 3 steps.

    "sum" optimises (token sum of the global batch) / 4 either way: identical runs. "mean" averages
    micro-batch means, so with 1-example micro-batches short answers weigh more: different runs.
    """
    runs = {}
    for reduction in ("sum", "mean"):
        for per_device, accumulation in ((4, 1), (1, 4)):
            model, tokenizer = load_tiny(tiny_model_dir)
            cfg = config(tmp_path, f"{reduction}-{per_device}", loss_reduction=reduction, max_steps=3,
                         per_device_batch=per_device, gradient_accumulation=accumulation, learning_rate=1e-2)
            summary = train_sft(cfg, model, tokenizer, rows(), progress=False)
            runs[reduction, per_device] = (metrics(cfg.metrics_path), trained_weights(summary))

    def max_weight_gap(a, b):
        return max(float((a[n] - b[n]).abs().max()) for n in a)

    (sum4, w_sum4), (sum1, w_sum1) = runs["sum", 4], runs["sum", 1]
    assert [r["loss"] for r in sum4] == pytest.approx([r["loss"] for r in sum1], rel=1e-5)
    sum_gap = max_weight_gap(w_sum4, w_sum1)
    (mean4, w_mean4), (mean1, w_mean1) = runs["mean", 4], runs["mean", 1]
    assert mean4[0]["loss"] == pytest.approx(mean1[0]["loss"], rel=1e-6)  # same weights, same data at step 1
    mean_gap = max_weight_gap(w_mean4, w_mean1)
    # Adam turns float rounding in near-zero gradient entries into small weight differences: the
    # "sum" runs agree to rounding, the "mean" runs differ by orders of magnitude more.
    assert sum_gap < 1e-4 and mean_gap > 100 * sum_gap

    # The logged objective is what each reduction optimises (step 1, before any update).
    first = sum4[0]
    assert first["objective"] == pytest.approx(first["loss"] * first["label_tokens"] / 4, rel=1e-6)
    assert mean4[0]["objective"] == pytest.approx(mean4[0]["loss"], rel=1e-6)  # one micro-batch: its mean
    assert mean1[0]["objective"] != mean1[0]["loss"]  # the mean of 4 per-example means is another number


def test_prompt_tokens_get_no_gradient(tiny):
    """Logit positions predicting prompt / marker / padding tokens get zero gradient, the others not;
    an example with no label in the batch changes no parameter gradient."""
    from tulu_lab.chat import pad_batch

    model, tokenizer = tiny
    examples, _ = encode_sft_data(rows()[:2], tokenizer, 64)
    batch = pad_batch(examples, tokenizer.pad_token_id, side="right")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits.retain_grad()
    loss, _, n_tokens = micro_batch_loss(logits, batch["labels"], "sum", per_device_batch=2)
    loss.backward()
    scored = batch["labels"][:, 1:] != -100
    per_position = logits.grad[:, :-1].abs().sum(-1)
    assert n_tokens == scored.sum()
    assert torch.all(per_position[~scored] == 0)
    assert torch.all(per_position[scored] > 0)
    assert torch.all(logits.grad[:, -1] == 0)

    def param_grads(batch_examples):
        model.zero_grad()
        b = pad_batch(batch_examples, tokenizer.pad_token_id, side="right")
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        micro_batch_loss(out, b["labels"], "sum", per_device_batch=2)[0].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    prompt_only = dict(examples[1])
    prompt_only["labels"] = torch.full_like(prompt_only["labels"], -100)
    alone = param_grads([examples[0]])
    with_prompt_only = param_grads([examples[0], prompt_only])
    model.zero_grad()
    for name in alone:
        torch.testing.assert_close(with_prompt_only[name], alone[name], atol=1e-6, rtol=1e-5)


def test_truncated_examples_are_dropped_and_counted(tiny_model_dir, tmp_path):
    model, tokenizer = load_tiny(tiny_model_dir)
    data = rows()[:8] + [{"messages": [{"role": "user", "content": "long question " * 40},
                                       {"role": "assistant", "content": "7"}]}]
    examples, dropped = encode_sft_data(data, tokenizer, 40)
    assert (len(examples), dropped) == (8, 1)
    summary = train_sft(config(tmp_path, max_seq_len=40), model, tokenizer, data, progress=False)
    assert summary["dropped_examples"] == 1 and summary["examples"] == 8 and summary["steps"] == 2


def test_bad_data_and_impossible_setups_fail_clearly(tiny_model_dir, tmp_path):
    model, tokenizer = load_tiny(tiny_model_dir)
    cfg = config(tmp_path)
    good = rows()
    with pytest.raises(ValueError, match="empty"):
        train_sft(cfg, model, tokenizer, [], progress=False)
    with pytest.raises(ValueError, match=r"data\[2\].*'messages'"):
        train_sft(cfg, model, tokenizer, good[:2] + [{"text": "hello"}], progress=False)
    bad_role = good[:3] + [{"messages": [{"role": "robot", "content": "hi"}]}]
    with pytest.raises(ValueError, match=r"data\[3\]\['messages'\]\[0\]"):
        train_sft(cfg, model, tokenizer, bad_role, progress=False)
    with pytest.raises(ValueError, match=r"data\[1\]\['messages'\]: no assistant"):
        train_sft(cfg, model, tokenizer, [good[0], {"messages": [{"role": "user", "content": "hi"}]}],
                  progress=False)
    with pytest.raises(ValueError, match="effective_batch=4"):
        train_sft(cfg, model, tokenizer, good[:3], progress=False)
    with pytest.raises(ValueError, match="quant='nf4'"):
        train_sft(config(tmp_path, lora=LoraSettings(r=4, quantize_4bit=True)), model, tokenizer, good,
                  progress=False)
    with pytest.raises(ValueError, match="num_processes"):
        train_sft(config(tmp_path, num_processes=2), model, tokenizer, good, progress=False)


def test_qlora_trains_a_4bit_model(tiny_model_dir, tmp_path):
    from tulu_lab.models import load_model

    model, tokenizer = load_model(tiny_model_dir, quant="nf4", dtype="fp32", verbose=False)
    cfg = config(tmp_path, epochs=3, learning_rate=1e-2, lora=LoraSettings(r=4, alpha=8, dropout=0.0,
                                                                            quantize_4bit=True))
    summary = train_sft(cfg, model, tokenizer, rows(), progress=False)
    losses = [r["loss"] for r in metrics(cfg.metrics_path)]
    assert losses[-1] < losses[0]
    assert Path(summary["final_dir"], "adapter", "adapter_config.json").is_file()


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """A run killed with SIGKILL after a checkpoint, then resumed, ends exactly like one never stopped."""
    reference_cfg = resume_config(tmp_path / "uninterrupted")
    model, tokenizer = load_tiny(tiny_model_dir)
    reference = train_sft(reference_cfg, model, tokenizer, resume_data(), progress=False)

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(TESTS / "sft_resume_script.py"), str(tiny_model_dir),
                                str(killed_dir), "0.15"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (killed_dir / "checkpoint-4" / "step.json").is_file():
            if process.poll() is not None:
                pytest.fail(f"training script ended before its checkpoint:\n{process.stdout.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint-4 within 120 s")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_dir / "final").exists()  # it really stopped mid-way

    model, tokenizer = load_tiny(tiny_model_dir)
    resumed = train_sft(resume_config(killed_dir), model, tokenizer, resume_data(), progress=False)
    assert 4 <= resumed["start_step"] < 8
    assert without_time(metrics(killed_dir / "metrics.jsonl")) == without_time(metrics(reference_cfg.metrics_path))
    got, want = trained_weights(resumed), trained_weights(reference)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_logits_only_where_labels_are_scored_give_the_same_loss(tiny):
    """The loop asks the model for logits from the position predicting the batch's first label on
    (training.scored_positions): the loss must equal the full-sequence loss."""
    from tulu_lab.chat import pad_batch
    from tulu_lab.training import scored_positions

    model, tokenizer = tiny
    examples, _ = encode_sft_data(rows()[:4], tokenizer, 64)
    batch = pad_batch(examples, tokenizer.pad_token_id, side="right")
    keep = scored_positions(batch["labels"])
    first_label = int((batch["labels"] != -100).any(0).nonzero()[0])
    assert keep == batch["labels"].size(1) - first_label + 1 < batch["labels"].size(1)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        window = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    full_loss = micro_batch_loss(full, batch["labels"], "sum", 4)
    window_loss = micro_batch_loss(window, batch["labels"][:, -keep:], "sum", 4)
    assert window.shape[1] == keep
    torch.testing.assert_close(window_loss[0], full_loss[0], rtol=1e-6, atol=1e-5)
    assert int(window_loss[2]) == int(full_loss[2])
