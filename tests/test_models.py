"""Model loading: tiny checkpoints through the real loader, the embedded model, errors, quantisation."""

import os
import subprocess
import sys

import pytest
import torch

from tulu_lab.models import ModelNotFoundError, load_model, lora_config


def test_tiny_checkpoint_reloads_identically(tiny_model_dir):
    from tulu_lab.tiny import make_tiny_llama
    fresh, _ = make_tiny_llama(None, seed=0)
    model, tok = load_model(tiny_model_dir, dtype="fp32", verbose=False)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    for (name, a), (_, b) in zip(fresh.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert (tiny_model_dir / "model.safetensors").is_file()


def test_missing_model_error_says_what_and_how(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        load_model(str(tmp_path / "nope" / "deeper"), verbose=False)
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download"):
        load_model("allenai/this-model-does-not-exist-xyz", verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty"), verbose=False)


def test_bad_arguments(tiny_model_dir):
    with pytest.raises(ValueError, match="quant='fp4'"):
        load_model(tiny_model_dir, quant="fp4", verbose=False)
    with pytest.raises(ValueError, match="dtype='half-ish'"):
        load_model(tiny_model_dir, dtype="half-ish", verbose=False)


def test_lora_fresh_and_saved(tiny_model_dir, tmp_path):
    model, _ = load_model(tiny_model_dir, dtype="fp32", lora=lora_config(r=4), verbose=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters()) / 2
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load_model(tiny_model_dir, dtype="fp32", lora=str(tmp_path / "adapter"), verbose=False)
    x = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(model(x).logits, again(x).logits, atol=1e-5)
    assert any(p.requires_grad for p in again.parameters())
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        load_model(tiny_model_dir, lora=str(tmp_path), verbose=False)


def test_nf4_tiny_loads_and_runs(tiny_model_dir):
    model, _ = load_model(tiny_model_dir, quant="nf4", verbose=False)
    import bitsandbytes as bnb
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    out = model(torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(out).all()


def test_default_dtype_follows_the_hardware():
    from tulu_lab.models import bf16_is_fast, default_compute_dtype
    expected = torch.bfloat16 if bf16_is_fast("cpu") else torch.float32
    assert default_compute_dtype("cpu") == expected


def test_trust_remote_code_off_by_default(tiny_model_dir, monkeypatch):
    import transformers
    seen = {}
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(tiny_model_dir, verbose=False)
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


@pytest.mark.slow
def test_embedded_model_loads_offline_and_is_not_reconverted(embedded):
    model, tok = embedded
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert 134e6 < model.num_parameters() < 136e6
    from tulu_lab.models import CONVERTED_MARKER, embedded_model_dir
    folder = embedded_model_dir(verbose=False)
    marker = folder / CONVERTED_MARKER
    stamp = marker.stat().st_mtime_ns
    code = ("from tulu_lab.models import load_model; m, t = load_model('smollm2-135m'); "
            "print(type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LlamaForCausalLM" in out.stdout and "converting" not in out.stdout
    assert marker.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_embedded_nf4_footprint_under_half_of_bf16():
    bf16, _ = load_model("smollm2-135m", dtype="bf16", verbose=False)
    assert bf16.dtype == torch.bfloat16
    nf4, _ = load_model("smollm2-135m", quant="nf4", dtype="bf16", verbose=False)
    ratio = nf4.get_memory_footprint() / bf16.get_memory_footprint()
    assert ratio < 0.5, ratio
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert (nf4(x).logits.argmax(-1) == bf16(x).logits.argmax(-1)).float().mean() >= 0.5


@pytest.mark.slow
def test_embedded_conversion_from_scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("TULU_LAB_CACHE", str(tmp_path))
    from tulu_lab.models import embedded_model_dir
    folder = embedded_model_dir(verbose=False)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not (tmp_path / "smollm2-135m-instruct.partial").exists()


def test_load_that_cannot_fit_is_refused_before_reading_weights(tmp_path):
    """A 405B config with no weights at all: the planner must refuse it from config.json alone."""
    import json
    from tulu_lab.memory import DoesNotFitError
    from tulu_lab.presets import __file__ as presets_init
    from pathlib import Path
    preset = json.loads((Path(presets_init).parent / "llama-3.1-405b.json").read_text())
    folder = tmp_path / "fake-405b"
    folder.mkdir()
    config = {k: v for k, v in preset.items() if not k.startswith("_")}
    config.setdefault("model_type", "llama")
    config.setdefault("architectures", ["LlamaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DoesNotFitError) as err:
        load_model(str(folder), quant="nf4", verbose=False)
    message = str(err.value)
    assert "GB" in message
