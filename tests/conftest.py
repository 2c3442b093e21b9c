"""Shared test fixtures: offline hub, tiny random Llama checkpoints, the embedded model (slow tests)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random Llama checkpoint (2 layers, width 64) with a locally trained tokenizer."""
    from tulu_lab.tiny import make_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    """(model, tokenizer) loaded once through the real loader, Tülu template installed."""
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.models import load_model

    model, tokenizer = load_model(tiny_model_dir, dtype="fp32", verbose=False)
    install_tulu_template(tokenizer)
    return model, tokenizer


@pytest.fixture
def tiny(tiny_loaded):
    """A private copy of the tiny model per test: a test that wraps, freezes or trains it cannot leak
    that state (e.g. requires_grad=False from a LoRA wrapper) into the tests after it."""
    import copy

    model, tokenizer = tiny_loaded
    return copy.deepcopy(model), copy.deepcopy(tokenizer)


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct in bf16 (converted from the packaged GGUF on first use)."""
    from tulu_lab.models import load_model

    return load_model("smollm2-135m", verbose=False)
