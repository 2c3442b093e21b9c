"""Tests of tulu_lab.memory: the planner's bytes against models really loaded through transformers and
bitsandbytes (bf16, NF4, NF4 + double quant, LLM.int8 on CPU), the published Llama 3.1 shapes, device
specs, placement, and the loader hooks."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: no network in tests

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tulu_lab import memory
from tulu_lab.memory import (GB, GiB, MiB, Device, DoesNotFitError, ModelConfigError, available_devices,
                             bits_per_weight, bnb_config_for, check_fits, from_pretrained_kwargs,
                             kv_cache_bytes_per_token, linear_weight_bytes, measure_model_bytes, memory_grid,
                             parse_devices, plan_for_load, plan_memory, resolve_config)

REPO = Path(__file__).resolve().parents[1]

# Scaled-down Llama 3.1 shapes (GQA with 2 KV heads), one with tied embeddings.
TINY_SHAPES = {
    "untied-2l": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=768, vocab_size=1024, tie_word_embeddings=False),
    "tied-4l": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=768, vocab_size=2048, tie_word_embeddings=True),
}


def llama_param_count(hidden, layers, heads, kv_heads, inter, vocab, tied, head_dim=None):
    """Parameters of a Llama decoder, by hand: q/o are hidden x heads*hd, k/v hidden x kv*hd, the MLP three
    hidden x inter matrices, two RMSNorm vectors per layer, a final norm, embeddings (+ untied head)."""
    hd = head_dim or hidden // heads
    per_layer = 2 * hidden * heads * hd + 2 * hidden * kv_heads * hd + 3 * hidden * inter + 2 * hidden
    return layers * per_layer + hidden + vocab * hidden * (1 if tied else 2)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    folders = {}
    for name, shape in TINY_SHAPES.items():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        folders[name] = folder
    return folders


def load(folder, quant, double_quant=False):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quant == "bf16":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="cpu")
    if quant == "nf4":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, dtype=torch.bfloat16,
                                                device_map="cpu")


# ---- agreement with really loaded models -------------------------------------------------------------

@pytest.mark.parametrize("shape", sorted(TINY_SHAPES))
@pytest.mark.parametrize("quant,double_quant", [("bf16", False), ("nf4", False), ("nf4", True), ("int8", False)])
def test_planned_weights_match_loaded_model(tiny_folders, shape, quant, double_quant):
    model = load(tiny_folders[shape], quant, double_quant)
    real = measure_model_bytes(model)
    plan = plan_memory(tiny_folders[shape], quant=quant, double_quant=double_quant, gpus="cpu:1GB",
                       context_tokens=16)
    assert abs(plan.weights_bytes / real - 1) < 0.02, (plan.weights_bytes, real)
    if quant in ("nf4", "int8"):
        # get_memory_footprint misses the quantisation state; measure_model_bytes must not
        assert real > model.get_memory_footprint()
        assert plan.quantised_parameters == sum(
            m.in_features * m.out_features for m in model.modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt"))


def test_measure_counts_nested_quant_state_once(tiny_folders):
    model = load(tiny_folders["untied-2l"], "nf4", double_quant=True)
    state = model.model.layers[0].mlp.up_proj.weight.quant_state
    nested = state.state2
    extra = sum(t.numel() * t.element_size() for t in (state.absmax, state.code, state.offset,
                                                       nested.absmax, nested.code))
    n_linear = 7 * TINY_SHAPES["untied-2l"]["num_hidden_layers"]
    assert measure_model_bytes(model) > model.get_memory_footprint() + extra  # every layer's state, not one
    assert measure_model_bytes(model) < model.get_memory_footprint() + 2 * n_linear * extra


def test_tied_embedding_counted_once(tiny_folders):
    model = load(tiny_folders["tied-4l"], "bf16")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    params = sum(p.numel() for p in model.parameters())  # parameters() already de-duplicates
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert measure_model_bytes(model) == 2 * params + buffers
    shape = TINY_SHAPES["tied-4l"]
    assert params == llama_param_count(shape["hidden_size"], shape["num_hidden_layers"], 4, 2, 768, 2048, True)


def test_qlora_plan_matches_peft(tiny_folders):
    """QLoRA as the loader does it: prepare_model_for_kbit_training (unquantised weights to fp32) + adapters."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = load(tiny_folders["untied-2l"], "nf4", double_quant=True)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan = plan_memory(tiny_folders["untied-2l"], quant="nf4", lora=lora, gpus="cpu:1GB", context_tokens=16)
    assert plan.training and plan.components["lora"] == 4 * trainable
    assert plan.components["gradients"] == 4 * trainable and plan.components["optimizer"] == 8 * trainable
    real = measure_model_bytes(model)
    assert abs((plan.weights_bytes + plan.components["lora"]) / real - 1) < 0.02


def test_device_map_and_kwargs_load_with_transformers(tiny_folders):
    from transformers import AutoModelForCausalLM

    plan = plan_memory(tiny_folders["tied-4l"], quant="nf4", gpus="cpu:2GB", context_tokens=32)
    assert plan.fits and set(plan.device_map.values()) == {"cpu"}
    kwargs = from_pretrained_kwargs(plan)
    model = AutoModelForCausalLM.from_pretrained(tiny_folders["tied-4l"], **kwargs)
    # every parameter is covered by exactly one device_map entry
    for name, _ in model.named_parameters():
        owners = [key for key in plan.device_map if name == key or name.startswith(key + ".")]
        assert len(owners) == 1, name
    assert abs(plan.weights_bytes / measure_model_bytes(model) - 1) < 0.02


# ---- the published shapes -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [("llama-3.1-8b", 8_030_261_248), ("llama-3.1-70b", 70_553_706_496),
                                           ("llama-3.1-405b", 405_853_388_800), ("smollm2-135m", 134_515_008)])
def test_preset_parameter_counts(name, expected):
    _, config = resolve_config(name)
    by_hand = llama_param_count(config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                                config.num_key_value_heads, config.intermediate_size, config.vocab_size,
                                config.tie_word_embeddings, config.head_dim)
    plan = plan_memory(name, quant="bf16", gpus="1xH200")
    assert plan.parameters == by_hand == expected


def test_405b_in_4_bits():
    dq = plan_memory("llama-3.1-405b", quant="nf4", double_quant=True, gpus="1xH200")
    plain = plan_memory("llama-3.1-405b", quant="nf4", double_quant=False, gpus="1xH200")
    bf16 = plan_memory("llama-3.1-405b", quant="bf16", gpus="8xH100")
    assert 401.6e9 < dq.quantised_parameters < 401.7e9
    assert 215 * GB < dq.weights_bytes < 217 * GB
    assert 233 * GB < plain.weights_bytes < 235 * GB
    assert 805 * GB < bf16.weights_bytes < 815 * GB
    # one H200 is too small, two suffice; three 80 GB GPUs hold it at 4096 tokens
    assert not dq.fits and dq.min_devices == 2 and dq.device_map is None
    assert dq.devices_needed == {"A100-80GB": 3, "H100-80GB": 3, "H200": 2}
    assert not plan_memory("llama-3.1-405b", quant="nf4", gpus="2xA100-80GB").fits
    assert plan_memory("llama-3.1-405b", quant="nf4", gpus="3xA100-80GB").fits
    text = str(dq)
    assert "215.6" in text and "2 x H200" in text and "3 x H100-80GB" in text and "NO" in text


def test_bits_per_weight_and_linear_bytes():
    assert bits_per_weight("nf4", double_quant=False) == 4.5
    assert abs(bits_per_weight("nf4", double_quant=True) - 4.127) < 0.001
    n_in, n_out = 16384, 53248
    assert abs(8 * linear_weight_bytes(n_in, n_out, "nf4", double_quant=True) / (n_in * n_out) - 4.127) < 0.001
    assert linear_weight_bytes(256, 512, "int8") == 256 * 512 + 4 * 512
    assert linear_weight_bytes(256, 512, "bf16", has_bias=True) == 2 * (256 * 512 + 512)


def test_smollm2_matches_measured_footprints():
    """Measured on this project's machines: bf16 269.0 MB; NF4 116.4 MB; NF4 + double quant 111.5 MB."""
    for quant, dq, measured_mb in (("bf16", False, 269.0), ("nf4", False, 116.4), ("nf4", True, 111.5)):
        plan = plan_memory("smollm2-135m", quant=quant, double_quant=dq, gpus="cpu:4GB")
        assert abs(plan.weights_bytes / (measured_mb * 1e6) - 1) < 0.005, (quant, dq, plan.weights_bytes)


def test_tulu_alias_adds_pad_token_rows():
    base = plan_memory("llama-3.1-405b", quant="nf4", gpus="4xH100")
    tulu = plan_memory("allenai/Llama-3.1-Tulu-3-405B", quant="nf4", gpus="4xH100")
    assert resolve_config("allenai/Llama-3.1-Tulu-3-405B")[1].vocab_size == 128264
    # 8 more rows in the embedding and in the head, bf16
    assert tulu.weights_bytes - base.weights_bytes == 2 * 8 * 16384 * 2


def test_kv_cache():
    assert kv_cache_bytes_per_token("llama-3.1-405b") == 2 * 126 * 8 * 128 * 2 == 516_096
    plan = plan_memory("llama-3.1-8b", quant="nf4", context_tokens=8192, batch_size=4, gpus="1xA100-80GB")
    assert plan.kv_cache_bytes == 4 * 8192 * kv_cache_bytes_per_token("llama-3.1-8b")
    longer = plan_memory("llama-3.1-8b", quant="nf4", context_tokens=16384, batch_size=4, gpus="1xA100-80GB")
    assert longer.kv_cache_bytes == 2 * plan.kv_cache_bytes
    assert longer.components["activations"] > plan.components["activations"]


# ---- placement, fitting, suggestions ------------------------------------------------------------------

def test_multi_gpu_device_map_is_contiguous_and_within_capacity():
    plan = plan_memory("llama-3.1-405b", quant="nf4", gpus="4xA100-80GB", context_tokens=8192, batch_size=2)
    assert plan.fits
    layer_devices = [plan.device_map[f"model.layers.{i}"] for i in range(126)]
    assert layer_devices == sorted(layer_devices) and set(layer_devices) == {0, 1, 2, 3}
    assert plan.device_map["model.embed_tokens"] == 0 and plan.device_map["lm_head"] == 3
    assert sum(plan.layers_per_device) == 126
    for used, device in zip(plan.per_device_bytes, plan.devices):
        assert used <= device.total_bytes
    # balanced: no device carries much more than an even share
    assert max(plan.per_device_bytes) - min(plan.per_device_bytes) < 4 * GB + 4.3 * GB
    assert set(plan.max_memory) == {0, 1, 2, 3}
    assert all(0 < plan.max_memory[i] < plan.devices[i].total_bytes for i in range(4))


def test_min_devices_is_the_smallest_that_fits():
    for gpus in ("1xL40S", "1xT4", "1xRTX4090"):
        plan = plan_memory("llama-3.1-70b", quant="nf4", gpus=gpus, context_tokens=4096)
        n = plan.min_devices
        kind = gpus.split("x", 1)[1]
        assert plan_memory("llama-3.1-70b", quant="nf4", gpus=f"{n}x{kind}").fits
        assert n == 1 or not plan_memory("llama-3.1-70b", quant="nf4", gpus=f"{n - 1}x{kind}").fits


def test_tied_head_shares_the_embedding_device():
    plan = plan_memory("smollm2-135m", quant="bf16", gpus=["T4", "T4"], context_tokens=2048)
    assert plan.device_map["lm_head"] == plan.device_map["model.embed_tokens"]


def test_check_fits_message():
    plan = plan_memory("llama-3.1-405b", quant="nf4", gpus="1xH200")
    with pytest.raises(DoesNotFitError) as info:
        check_fits(plan)
    assert isinstance(info.value, MemoryError) and info.value.plan is plan
    message = str(info.value)
    assert "device 0 (H200): needs" in message and "has 150.8 GB" in message
    assert "smallest count that fits: 2 x H200" in message
    check_fits(plan_memory("llama-3.1-405b", quant="nf4", gpus="2xH200"))  # no error


def test_plan_for_load_refuses_what_cannot_fit(tiny_folders):
    plan = plan_for_load(tiny_folders["untied-2l"], quant="nf4", dtype=torch.bfloat16, gpus="cpu:1GB")
    assert plan.quant == "nf4" and plan.fits
    unquantised = plan_for_load(tiny_folders["untied-2l"], gpus="cpu:1GB")
    assert unquantised.quant == "bf16"  # the checkpoint's own dtype
    with pytest.raises(DoesNotFitError, match="does not fit"):
        plan_for_load(tiny_folders["untied-2l"], quant=None, dtype="fp32", gpus="cpu:1MB")


# ---- devices -------------------------------------------------------------------------------------------

def test_gpu_specs():
    four = parse_devices("4xA100-80GB")
    assert len(four) == 4 and all(d.total_bytes == 81920 * MiB and d.kind == "cuda" for d in four)
    assert [d.name for d in parse_devices("2 x h200")] == ["H200", "H200"]
    assert parse_devices("8xH100")[0].name == "H100-80GB" and len(parse_devices("8xH100")) == 8
    assert parse_devices("1xRTX4090")[0].total_bytes == 24564 * MiB
    cpu = parse_devices("cpu:64GB")[0]
    assert cpu.kind == "cpu" and cpu.total_bytes == 64 * GB and cpu.budget_bytes == 64 * GB
    mixed = parse_devices(["H200", "cpu:1TiB"])
    assert [d.kind for d in mixed] == ["cuda", "cpu"] and mixed[1].total_bytes == 2**40
    assert parse_devices(48 * GB)[0].total_bytes == 48 * GB
    assert parse_devices("H200")[0].budget_bytes == 143771 * MiB - GiB  # CUDA context reserve
    with pytest.raises(ValueError, match="unknown GPU 'B9000'.*A100-80GB.*H200"):
        parse_devices("4xB9000")
    with pytest.raises(ValueError, match="more than one cpu"):
        parse_devices(["cpu:1GB", "cpu:2GB"])


def test_mixed_gpu_and_cpu_device_map():
    plan = plan_memory("llama-3.1-70b", quant="nf4", gpus=["RTX4090", "cpu:64GB"], context_tokens=2048)
    assert plan.fits and set(plan.device_map.values()) == {0, "cpu"}
    assert set(plan.max_memory) == {0, "cpu"} and "cuda_reserve" not in plan.per_device[1]


def test_available_devices_describes_this_machine():
    devices = available_devices()
    assert devices and all(d.total_bytes > 0 for d in devices)
    if not torch.cuda.is_available():
        assert devices[0].kind == "cpu" and 0 < devices[0].free_bytes <= devices[0].total_bytes


# ---- inputs and errors ---------------------------------------------------------------------------------

def test_model_inputs(tiny_folders, tmp_path):
    from transformers import AutoConfig

    folder = tiny_folders["untied-2l"]
    by_folder = plan_memory(folder, quant="nf4", gpus="cpu:1GB")
    by_file = plan_memory(folder / "config.json", quant="nf4", gpus="cpu:1GB")
    by_config = plan_memory(AutoConfig.from_pretrained(folder), quant="nf4", gpus="cpu:1GB")
    assert by_folder.weights_bytes == by_file.weights_bytes == by_config.weights_bytes
    with pytest.raises(ModelConfigError, match="config.json"):
        plan_memory("nobody-here/not-a-model-xyz", gpus="cpu:1GB")  # hub: offline or missing
    with pytest.raises(ModelConfigError, match="no config.json"):
        plan_memory(tmp_path, gpus="cpu:1GB")
    with pytest.raises(ModelConfigError, match="not a preset"):
        plan_memory("llama-9000", gpus="cpu:1GB")
    with pytest.raises(ValueError, match="quant='int4'"):
        plan_memory("llama-3.1-8b", quant="int4", gpus="1xH200")
    with pytest.raises(ValueError, match="context_tokens"):
        plan_memory("llama-3.1-8b", context_tokens=0, gpus="1xH200")


def test_training_components():
    full = plan_memory("llama-3.1-8b", quant="bf16", training=True, gpus="8xH100", context_tokens=2048)
    params = full.parameters
    assert full.components["gradients"] == 2 * params
    assert full.components["optimizer"] == 8 * params and full.components["master_weights"] == 4 * params
    assert "kv_cache" not in full.components
    qlora = plan_memory("llama-3.1-8b", quant="nf4", lora=16, gpus="1xA100-80GB", context_tokens=2048)
    assert qlora.training and qlora.lora_rank == 16
    # all-linear rank 16: r * (in + out) over the 7 projections of 32 layers
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)
    assert qlora.components["lora"] == 4 * 32 * per_layer
    with pytest.raises(ValueError, match="cannot be trained directly"):
        plan_memory("llama-3.1-8b", quant="nf4", training=True, gpus="1xH200")


def test_bnb_config_for():
    from transformers import BitsAndBytesConfig

    kwargs = bnb_config_for(plan_memory("llama-3.1-8b", quant="nf4", double_quant=False, gpus="1xH200"))
    assert kwargs["load_in_4bit"] and kwargs["bnb_4bit_quant_type"] == "nf4"
    assert kwargs["bnb_4bit_use_double_quant"] is False and kwargs["bnb_4bit_compute_dtype"] == torch.bfloat16
    BitsAndBytesConfig(**kwargs)
    assert bnb_config_for(plan_memory("llama-3.1-8b", quant="int8", gpus="1xH200")) == {"load_in_8bit": True}
    assert bnb_config_for(plan_memory("llama-3.1-8b", quant="bf16", gpus="1xH200")) is None


# ---- rendering -----------------------------------------------------------------------------------------

def test_frames_and_rendering():
    plan = plan_memory("llama-3.1-70b", quant="nf4", gpus="2xL40S")
    frame = plan.to_frame()
    assert {"model", "quant", "component", "bytes", "device"} <= set(frame.columns)
    assert frame["bytes"].sum() == plan.total_bytes
    assert "<table" in plan._repr_html_() and "llama-3.1-70b" in str(plan)

    grid = memory_grid()
    assert list(grid.columns[:5]) == ["model", "quant", "weights_gb", "kv_gb", "total_gb"]
    assert len(grid) == 9
    row = grid[(grid.model == "llama-3.1-405b") & (grid.quant == "nf4")].iloc[0]
    assert 215 < row.weights_gb < 217 and row.gpus_141gb == 2
    assert (grid.total_gb >= grid.weights_gb + grid.kv_gb).all()
    by_quant = grid[grid.model == "llama-3.1-8b"].set_index("quant").weights_gb
    assert by_quant["bf16"] > by_quant["int8"] > by_quant["nf4"]


def test_benchmark_dry_run(capsys):
    spec = importlib.util.spec_from_file_location("gpu_405b_layer", REPO / "benchmarks" / "gpu_405b_layer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--dry-run", "--layers", "2"]) == 0
    out = capsys.readouterr().out
    assert "1.644 GB" in out and "2 x H200" in out
    if not torch.cuda.is_available():
        assert bench.main(["--layers", "1"]) == 2  # clear refusal, no traceback


# ---- the embedded model (slow: converts and loads SmolLM2-135M) ---------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("quant,double_quant,dtype", [(None, True, "bf16"), (None, True, "fp32"), ("nf4", False, "bf16"),
                                                      ("nf4", True, "bf16"), ("nf4", True, "fp32")])
def test_embedded_smollm2_matches_plan(quant, double_quant, dtype):
    from tulu_lab.models import load_model

    # the dtype is explicit: load_model's default follows the CPU (float32 where bf16 is emulated)
    model, _ = load_model("smollm2-135m", quant=quant, double_quant=double_quant, dtype=dtype, verbose=False)
    plan = plan_memory("smollm2-135m", quant=quant or dtype, double_quant=double_quant, gpus="cpu:4GB",
                       compute_dtype=dtype)
    real = measure_model_bytes(model)
    assert abs(plan.weights_bytes / real - 1) < 0.02, (plan.weights_bytes, real)


# ---- the placement algorithm against brute force --------------------------------------------------------

def _brute_force_min_max_load(costs, caps):
    """Smallest possible largest-device load over every contiguous split of costs onto the devices."""
    import itertools

    best = None
    n = len(costs)
    for cuts in itertools.combinations_with_replacement(range(n + 1), len(caps) - 1):
        bounds = (0, *cuts, n)
        loads = [sum(costs[bounds[i]:bounds[i + 1]]) for i in range(len(caps))]
        if all(load <= cap for load, cap in zip(loads, caps)):
            best = max(loads) if best is None else min(best, max(loads))
    return best


def test_balanced_placement_is_optimal():
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(1, 50), min_size=1, max_size=7), st.lists(st.integers(1, 120), min_size=1, max_size=3))
    def check(costs, caps):
        assignment = memory._balanced(costs, caps, len(caps))
        best = _brute_force_min_max_load(costs, caps)
        if best is None:
            assert assignment is None
            return
        assert assignment == sorted(assignment)  # contiguous, in device order
        loads = [sum(c for c, d in zip(costs, assignment) if d == i) for i in range(len(caps))]
        assert all(load <= cap for load, cap in zip(loads, caps))
        assert max(loads) == best

    check()
