"""Memory planner: how many bytes a causal LM needs, per device, before any weight is read.

``plan_memory(model, quant=..., context_tokens=..., batch_size=..., gpus=...)`` reads a config only
(a transformers config, a local config.json, a hub id's config.json, or a shipped preset such as
``"llama-3.1-405b"``), builds the model on PyTorch's "meta" device (shapes, no storage) and walks its
modules. Every ``nn.Linear`` that transformers hands to bitsandbytes is costed at the quantised width;
everything else (embeddings, the LM head, norms, rotary buffers) at the compute dtype. The per-module
sizes then go onto devices layer by layer, the way ``device_map`` places them.

Quantised widths, byte for byte as bitsandbytes 0.50 stores them (measured against real loads in
tests/test_memory.py):

* NF4: 4-bit codes packed two per byte, one fp32 absmax per 64-weight block -> 4.5 bits/weight,
  plus a 16-entry fp32 code book per layer.
* NF4 + double quant: the absmax values themselves quantised to 8 bits, with one fp32 absmax per 256
  of them and a 256-entry fp32 code book and an fp32 offset per layer -> 4 + 8/64 + 32/16384 = 4.127
  bits/weight.
* LLM.int8: one int8 byte per weight plus one fp32 scale per output row.

Not modelled: on CPUs with AVX512-BF16, bitsandbytes repacks NF4 weights at the first forward pass
(bf16 absmax, double quant undone: 4.25 bits/weight afterwards); on CUDA the layout stays as loaded.

Estimates (stated, not measured): activations assume SDPA attention (no seq x seq score matrix) and,
for training, gradient checkpointing; generation keeps logits of the last position only. Each GPU
loses ``CUDA_CONTEXT_RESERVE`` (1 GiB) to the CUDA context and kernels. Sizes print in GB = 10^9 bytes.

Other entry points: ``memory_grid`` (tidy table for the notebook chart), ``measure_model_bytes``
(what a loaded model really holds, quantisation state included), ``available_devices`` /
``plan_for_load`` / ``check_fits`` / ``bnb_config_for`` (used by the loader).
"""

from __future__ import annotations

import dataclasses
import functools
import html
import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

GB = 10**9
GiB = 2**30
MiB = 2**20
CUDA_CONTEXT_RESERVE = 1 * GiB  # CUDA context + cuBLAS workspace + allocator slack, per GPU

QUANTS = ("nf4", "int8", "bf16", "fp16", "fp32")
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

NF4_BLOCK = 64           # weights per absmax (bitsandbytes blocksize for 4-bit)
NF4_CODE_ENTRIES = 16    # fp32 code book of the 16 NF4 levels, one per layer
NESTED_BLOCK = 256       # absmax values per second-level fp32 absmax (double quant)
NESTED_CODE_ENTRIES = 256  # fp32 code book of the 8-bit dynamic map, one per layer

# Total memory as nvidia-smi reports it (MiB). Marketing names say "80GB" for 80 GiB.
GPU_MEMORY_MIB = {
    "A100-40GB": 40960,
    "A100-80GB": 81920,
    "H100-80GB": 81559,
    "H200": 143771,
    "L40S": 46068,
    "L4": 23034,
    "A10G": 23028,
    "A6000": 49140,
    "RTX3090": 24576,
    "RTX4090": 24564,
    "T4": 15360,
    "V100-16GB": 16384,
    "V100-32GB": 32768,
}
GPU_ALIASES = {
    "H100": "H100-80GB", "H200-141GB": "H200", "L40S-48GB": "L40S", "L4-24GB": "L4",
    "A10G-24GB": "A10G", "RTX-A6000": "A6000", "A6000-48GB": "A6000", "RTX3090-24GB": "RTX3090",
    "RTX4090-24GB": "RTX4090", "T4-16GB": "T4",
}
# GPUs the text table names a count for, whatever was asked: the 80 GB and 141 GB classes.
REFERENCE_GPUS = ("A100-80GB", "H100-80GB", "H200")
MAX_DEVICES_SEARCHED = 1024


class DoesNotFitError(MemoryError):
    """The planned model does not fit the devices; ``.plan`` holds the MemoryPlan."""

    def __init__(self, message: str, plan: "MemoryPlan"):
        super().__init__(message)
        self.plan = plan


class ModelConfigError(ValueError):
    """A model name, folder or hub id whose config cannot be found or read."""


# --------------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Device:
    """One device to plan against. ``free_bytes`` is set for devices measured on this machine."""

    name: str
    total_bytes: int
    kind: str = "cuda"  # "cuda" or "cpu"
    free_bytes: int | None = None

    @property
    def reserve_bytes(self) -> int:
        return CUDA_CONTEXT_RESERVE if self.kind == "cuda" else 0

    @property
    def budget_bytes(self) -> int:
        """Bytes the model may use: total minus the CUDA reserve, or what is free if that is less."""
        budget = self.total_bytes - self.reserve_bytes
        if self.free_bytes is not None:
            budget = min(budget, self.free_bytes)
        return max(budget, 0)


def gpu(name: str) -> Device:
    """A known GPU by name (case-insensitive): "A100-80GB", "H200", "RTX4090", ..."""
    key = _canonical_gpu_name(name)
    if key is None:
        known = ", ".join(sorted(GPU_MEMORY_MIB))
        raise ValueError(f"unknown GPU {name!r}; known GPUs: {known} "
                         f"(or give a size: 'cpu:64GB', or a byte count)")
    return Device(key, GPU_MEMORY_MIB[key] * MiB, "cuda")


def _canonical_gpu_name(name: str) -> str | None:
    key = re.sub(r"[\s_]+", "-", name.strip()).upper().replace("NVIDIA-", "")
    by_upper = {k.upper(): k for k in GPU_MEMORY_MIB}
    by_upper.update({k.upper(): v for k, v in GPU_ALIASES.items()})
    if key in by_upper:
        return by_upper[key]
    # "A100-80G", "H100 80 GB", "RTX 4090": compare without dashes and a trailing "B"
    squash = {k.replace("-", "").rstrip("B"): v for k, v in by_upper.items()}
    return squash.get(key.replace("-", "").rstrip("B"))


def parse_size(text: str) -> int:
    """'64GB' -> 64e9 bytes, '64GiB' -> 64 * 2**30, '512MB', '1.5TB'; a bare number is bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"size {text!r} not understood; expected e.g. '64GB', '48GiB' or a byte count")
    value, unit = float(match.group(1)), (match.group(2) or "B").upper()
    if unit == "B":
        return int(value)
    power = "KMGT".index(unit[0]) + 1
    base = 1024 if "I" in unit else 1000
    return int(value * base**power)


def parse_devices(gpus: Any) -> list[Device]:
    """Devices from a spec: "4xA100-80GB", "2 x H200", "cpu", "cpu:64GB", "2xH200,cpu:256GB",
    a list of such strings / Device objects / byte counts, or None for this machine's devices."""
    if gpus is None:
        return available_devices()
    if isinstance(gpus, Device):
        return [gpus]
    if isinstance(gpus, str):
        parts = [p for p in re.split(r"[,+]", gpus) if p.strip()]
        if not parts:
            raise ValueError(f"gpus={gpus!r} is empty; expected e.g. '4xA100-80GB'")
        return [d for part in parts for d in _parse_one(part.strip(), gpus)]
    if isinstance(gpus, int) and not isinstance(gpus, bool):
        return [Device(f"{gpus / GB:.0f}GB", gpus, "cuda")]
    if isinstance(gpus, (list, tuple)):
        if not gpus:
            raise ValueError("gpus=[] names no device; expected e.g. ['H200', 'H200'] or '2xH200'")
        devices = [d for item in gpus for d in parse_devices(item)]
        if sum(d.kind == "cpu" for d in devices) > 1:
            raise ValueError(f"gpus={gpus!r} names more than one cpu entry; give one 'cpu:SIZE'")
        return devices
    raise TypeError(f"gpus must be a string like '4xA100-80GB', a list, a Device or None, "
                    f"got {type(gpus).__name__}")


def _parse_one(part: str, whole: str) -> list[Device]:
    if part.lower() == "cpu":
        return [_local_cpu()]
    if part.lower().startswith("cpu:"):
        return [Device("cpu", parse_size(part[4:]), "cpu")]
    match = re.fullmatch(r"(?:(\d+)\s*[xX×*]\s*)?(.+)", part)
    count, name = int(match.group(1) or 1), match.group(2)
    if count < 1:
        raise ValueError(f"gpus={whole!r}: device count must be at least 1, got {count}")
    try:
        return [gpu(name)] * count
    except ValueError as err:
        raise ValueError(f"gpus={whole!r}: {err}") from None


def available_devices() -> list[Device]:
    """This machine's devices: every CUDA GPU (total and free from torch.cuda.mem_get_info),
    otherwise the CPU with its total RAM and MemAvailable as the free bytes."""
    import torch

    if torch.cuda.is_available():
        devices = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append(Device(torch.cuda.get_device_name(index), int(total), "cuda", int(free)))
        return devices
    return [_local_cpu()]


def _local_cpu() -> Device:
    total, available = _system_memory()
    return Device("cpu", total, "cpu", available)


def _system_memory() -> tuple[int, int]:
    """(total, available) RAM in bytes, from /proc/meminfo, else psutil."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        fields = {}
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                fields[key] = int(parts[0]) * 1024  # values are in kB
        if "MemTotal" in fields:
            return fields["MemTotal"], fields.get("MemAvailable", fields["MemTotal"])
    try:
        import psutil
    except ImportError as err:
        raise RuntimeError("cannot read the RAM size: no /proc/meminfo and psutil is not installed; "
                           "pass gpus='cpu:64GB' instead") from err
    memory = psutil.virtual_memory()
    return int(memory.total), int(memory.available)


# --------------------------------------------------------------------------------------------------
# Model configs: presets, local folders, hub ids
# --------------------------------------------------------------------------------------------------

def preset_names() -> list[str]:
    """Short names and hub ids that resolve without a download."""
    files = [p.name[:-5] for p in resources.files("tulu_lab.presets").iterdir()
             if p.name.endswith(".json") and p.name != "aliases.json"]
    return sorted(files) + sorted(_aliases())


@functools.lru_cache(maxsize=1)
def _aliases() -> dict[str, dict]:
    text = resources.files("tulu_lab.presets").joinpath("aliases.json").read_text(encoding="utf-8")
    return json.loads(text)["aliases"]


def _preset_facts(name: str) -> dict | None:
    key = name.strip().lower()
    overrides: dict = {}
    if key in _aliases():
        overrides = dict(_aliases()[key])
        key = overrides.pop("preset")
    source = resources.files("tulu_lab.presets").joinpath(f"{key}.json")
    if not source.is_file():
        return None
    facts = json.loads(source.read_text(encoding="utf-8"))
    facts = {k: v for k, v in facts.items() if not k.startswith("_")}
    facts.update(overrides)
    return facts


def resolve_config(model: Any, *, trust_remote_code: bool = False) -> tuple[str, Any]:
    """(display name, transformers config) from a config object, preset name, folder, file or hub id.

    Reads config.json only; a hub id is fetched with huggingface_hub (config.json alone, from the
    cache when offline)."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return (getattr(model, "name_or_path", "") or model.model_type), model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a transformers config, a preset name, a folder or a hub id, "
                        f"got {type(model).__name__}")
    text = str(model)
    facts = _preset_facts(text)
    if facts is not None:
        model_type = facts.pop("model_type")
        return text, AutoConfig.for_model(model_type, **facts)
    path = Path(text).expanduser()
    if path.exists():
        folder = path.parent if path.is_file() else path
        config_file = path if path.is_file() else path / "config.json"
        if not config_file.is_file():
            raise ModelConfigError(f"model={text!r}: folder has no config.json")
        try:
            config = AutoConfig.from_pretrained(str(folder) if path.is_dir() else str(config_file),
                                                trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as err:
            raise ModelConfigError(f"model={text!r}: cannot read {config_file}: {err}") from err
        return text, config
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return text, _hub_config(text, trust_remote_code)
    raise ModelConfigError(f"model={text!r} is not a preset, an existing path or a hub id "
                           f"('owner/name'); presets: {', '.join(preset_names()[:4])}, ... "
                           f"(tulu_lab.memory.preset_names() lists them)")


def _hub_config(repo_id: str, trust_remote_code: bool):
    from huggingface_hub import hf_hub_download
    from transformers import AutoConfig

    try:
        config_file = hf_hub_download(repo_id, "config.json")
    except Exception as err:  # offline, gated, missing: all end the same way for the caller
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ModelConfigError(
            f"model={repo_id!r}: could not fetch its config.json from the Hugging Face Hub"
            f"{' (HF_HUB_OFFLINE=1 and it is not in the local cache)' if offline else ''}: "
            f"{type(err).__name__}: {err}. Pass a local folder, a transformers config, or a preset "
            f"such as 'llama-3.1-405b' or 'allenai/Llama-3.1-Tulu-3-8B'.") from err
    return AutoConfig.from_pretrained(config_file, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------------------------------
# Census: what the model is made of, from a meta-device instance
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Linear:
    name: str
    in_features: int
    out_features: int
    has_bias: bool


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One entry of a device_map: a decoder layer or a leaf module outside the layers."""

    name: str
    linears: tuple[_Linear, ...]   # quantisable nn.Linear modules inside
    other_params: int              # parameters kept at the compute dtype (first owner of tied ones)
    buffer_bytes: int              # buffers at their own dtype (rotary inv_freq ...)
    is_layer: bool
    tied_to: str | None            # unit that owns this unit's (tied) weight: same device


@dataclasses.dataclass(frozen=True)
class _Census:
    units: tuple[_Unit, ...]
    hidden: int
    intermediate: int
    vocab: int
    num_layers: int
    kv_heads: int
    head_dim: int
    tied: bool
    head_name: str | None  # the output head's unit: its logits are costed there

    @property
    def linears(self) -> list[_Linear]:
        return [lin for unit in self.units for lin in unit.linears]

    @property
    def quantisable_params(self) -> int:
        return sum(lin.in_features * lin.out_features for lin in self.linears)

    @property
    def other_params(self) -> int:
        biases = sum(lin.out_features for lin in self.linears if lin.has_bias)
        return sum(unit.other_params for unit in self.units) + biases


_CENSUS_CACHE: dict[str, _Census] = {}


def _census(config) -> _Census:
    """The census of ``config``, cached by its full JSON (a 405B meta build takes about 0.3 s)."""
    key = type(config).__name__ + config.to_json_string(use_diff=False)
    if key not in _CENSUS_CACHE:
        if len(_CENSUS_CACHE) >= 32:
            _CENSUS_CACHE.pop(next(iter(_CENSUS_CACHE)))
        _CENSUS_CACHE[key] = _build_census(config)
    return _CENSUS_CACHE[key]


def _build_census(config) -> _Census:
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as err:
        raise ModelConfigError(f"cannot build a causal LM from config (model_type="
                               f"{getattr(config, 'model_type', '?')!r}): {err}") from err

    # Linear layers transformers keeps out of bitsandbytes: the output head and anything tied to it.
    head = model.get_output_embeddings()
    tied_names = set(getattr(model, "all_tied_weights_keys", {}) or {})
    tied_names |= set((getattr(model, "all_tied_weights_keys", {}) or {}).values())
    keep_full = {id(head)} if head is not None else set()
    modules = dict(model.named_modules())
    for param_name in tied_names:
        owner = modules.get(param_name.rsplit(".", 1)[0])
        if owner is not None:
            keep_full.add(id(owner))
    keep_in_fp32 = set(getattr(model, "_keep_in_fp32_modules", None) or [])

    no_split = set(getattr(model, "_no_split_modules", None) or [])
    owner_of_param: dict[int, str] = {}
    units: list[_Unit] = []

    def visit(prefix: str, module: nn.Module) -> None:
        children = list(module.named_children())
        own_tensors = list(module.named_parameters(recurse=False)) or list(module.named_buffers(recurse=False))
        if type(module).__name__ in no_split or not children or own_tensors:
            units.append(make_unit(prefix, module, type(module).__name__ in no_split))
            return
        for child_name, child in children:
            visit(f"{prefix}.{child_name}" if prefix else child_name, child)

    def make_unit(name: str, module: nn.Module, is_layer: bool) -> _Unit:
        linears, other, tied_to = [], 0, None
        quantised_weights: set[int] = set()
        for sub_name, sub in module.named_modules():
            full = f"{name}.{sub_name}" if sub_name else name
            if (type(sub) is nn.Linear and id(sub) not in keep_full
                    and not any(part in keep_in_fp32 for part in full.split("."))):
                linears.append(_Linear(full, sub.in_features, sub.out_features, sub.bias is not None))
                quantised_weights.add(id(sub.weight))
                if sub.bias is not None:
                    quantised_weights.add(id(sub.bias))
        for param in module.parameters():
            if id(param) in owner_of_param:      # a tied weight already counted in an earlier unit
                tied_to = owner_of_param[id(param)]
                continue
            owner_of_param[id(param)] = name
            if id(param) not in quantised_weights:
                other += param.numel()
        buffer_bytes = sum(b.numel() * b.element_size() for b in module.buffers())
        return _Unit(name, tuple(linears), other, buffer_bytes, is_layer, tied_to)

    visit("", model)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    layers = [u for u in units if u.is_layer]
    if len(layers) != text.num_hidden_layers:
        raise ModelConfigError(f"found {len(layers)} decoder layers ({sorted(no_split)}) but the config "
                               f"says num_hidden_layers={text.num_hidden_layers}")
    return _Census(
        units=tuple(units), hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
        vocab=text.vocab_size, num_layers=text.num_hidden_layers,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
        tied=any(u.tied_to is not None for u in units),
        head_name=next((n for n, m in modules.items() if head is not None and m is head), None),
    )


# --------------------------------------------------------------------------------------------------
# Bytes per component
# --------------------------------------------------------------------------------------------------

def linear_weight_bytes(in_features: int, out_features: int, quant: str, *, double_quant: bool = True,
                        has_bias: bool = False, compute_dtype: str = "bf16") -> int:
    """Bytes one nn.Linear holds once loaded with ``quant`` (weight, quantisation state, bias)."""
    n = in_features * out_features
    bias = out_features * DTYPE_BYTES[compute_dtype] if has_bias else 0
    if quant in DTYPE_BYTES:
        return n * DTYPE_BYTES[quant] + (out_features * DTYPE_BYTES[quant] if has_bias else 0)
    if quant == "int8":
        return n + 4 * out_features + bias  # int8 codes + fp32 scale per output row
    if quant != "nf4":
        raise ValueError(f"quant={quant!r}; expected one of {QUANTS}")
    blocks = math.ceil(n / NF4_BLOCK)
    packed = math.ceil(n / 2)
    code = 4 * NF4_CODE_ENTRIES
    if not double_quant:
        return packed + 4 * blocks + code + bias
    nested_blocks = math.ceil(blocks / NESTED_BLOCK)
    # uint8 absmax + fp32 offset + fp32 second-level absmax + fp32 code book of the 8-bit map
    return packed + blocks + 4 + 4 * nested_blocks + 4 * NESTED_CODE_ENTRIES + code + bias


def bits_per_weight(quant: str, *, double_quant: bool = True) -> float:
    """Asymptotic bits per quantised weight (large layers): 4.5 / 4.127 / 8 / 16 / 32."""
    if quant in DTYPE_BYTES:
        return 8.0 * DTYPE_BYTES[quant]
    if quant == "int8":
        return 8.0
    if double_quant:
        return 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * NESTED_BLOCK)
    return 4 + 32 / NF4_BLOCK


def kv_cache_bytes_per_token(model: Any, dtype: str = "bf16") -> int:
    """K and V of every layer for one token: 2 x layers x KV heads x head dim x dtype bytes."""
    census = _census(resolve_config(model)[1])
    return 2 * census.num_layers * census.kv_heads * census.head_dim * DTYPE_BYTES[dtype]


@dataclasses.dataclass(frozen=True)
class _Settings:
    quant: str
    double_quant: bool
    compute_dtype: str
    context_tokens: int
    batch_size: int
    training: bool
    lora_rank: int | None
    lora_targets: tuple[str, ...] | None  # None = every quantisable linear ("all-linear")
    gradient_checkpointing: bool


def _is_lora_target(linear: _Linear, targets: tuple[str, ...] | None) -> bool:
    if targets is None:
        return True
    short = linear.name.rsplit(".", 1)[-1]
    return short in targets or any(linear.name.endswith("." + t) for t in targets)


def _unit_costs(unit: _Unit, census: _Census, s: _Settings) -> dict[str, int]:
    """Bytes that live with one device_map unit, by component."""
    cbytes = DTYPE_BYTES[s.compute_dtype]
    quantised = s.quant in ("nf4", "int8")
    # peft's prepare_model_for_kbit_training casts the unquantised weights to fp32 for QLoRA.
    other_bytes = 4 if (s.training and quantised) else (DTYPE_BYTES[s.quant] if not quantised else cbytes)
    costs = {
        "linear_weights": sum(linear_weight_bytes(l.in_features, l.out_features, s.quant,
                                                  double_quant=s.double_quant, has_bias=l.has_bias,
                                                  compute_dtype=s.compute_dtype)
                              for l in unit.linears),
        "other_weights": unit.other_params * other_bytes + unit.buffer_bytes,
    }
    tokens = s.batch_size * s.context_tokens
    kv_per_token_layer = 2 * census.kv_heads * census.head_dim * cbytes
    if unit.is_layer and not s.training:
        costs["kv_cache"] = tokens * kv_per_token_layer
    if not s.training:
        return costs

    if unit.is_layer:  # activations kept for the backward pass
        per_token = (census.hidden if s.gradient_checkpointing else
                     _saved_per_token(census))
        costs["activations"] = tokens * per_token * cbytes
    if s.lora_rank is not None:
        lora = sum(s.lora_rank * (l.in_features + l.out_features)
                   for l in unit.linears if _is_lora_target(l, s.lora_targets))
        costs["lora"] = 4 * lora        # adapters are kept in fp32 (peft's default)
        costs["gradients"] = 4 * lora
        costs["optimizer"] = 8 * lora   # AdamW: exp_avg and exp_avg_sq in fp32
    else:  # full fine-tuning of a bf16/fp16/fp32 model
        params = unit.other_params + sum(l.in_features * l.out_features + (l.out_features if l.has_bias else 0)
                                         for l in unit.linears)
        wbytes = DTYPE_BYTES[s.quant]
        costs["gradients"] = params * wbytes
        costs["optimizer"] = params * 8
        if wbytes != 4:
            costs["master_weights"] = params * 4  # fp32 copy for mixed-precision updates
    return costs


def _saved_per_token(census: _Census) -> int:
    """Elements one decoder layer saves per token for backward without checkpointing: norm outputs,
    q/k/v, attention output, residuals (about 6 x hidden + 2 x KV width) and the MLP's gate, up,
    activation and product (4 x intermediate)."""
    kv_width = census.kv_heads * census.head_dim
    return 6 * census.hidden + 2 * kv_width + 4 * census.intermediate


def _transient_bytes(census: _Census, s: _Settings) -> int:
    """Peak scratch memory on a device while it runs one layer (not kept between layers)."""
    cbytes = DTYPE_BYTES[s.compute_dtype]
    tokens = s.batch_size * s.context_tokens
    # one layer's working set during prefill: residual, norm, q and attention output, gate/up/product
    working = tokens * (4 * census.hidden + 3 * census.intermediate) * cbytes
    if s.training:
        working += tokens * _saved_per_token(census) * cbytes if s.gradient_checkpointing else 0
        working *= 2  # the backward pass holds gradients of the same tensors
    dequant = 0
    if s.quant in ("nf4", "int8"):
        # bitsandbytes dequantises a whole weight to the compute dtype for multi-token matmuls
        largest = max((l.in_features * l.out_features for l in census.linears), default=0)
        dequant = largest * cbytes
    return working + dequant


def _logits_bytes(census: _Census, s: _Settings) -> int:
    """Logits: last position only when generating; every position, fp32, with gradient, when training."""
    if s.training:
        return s.batch_size * s.context_tokens * census.vocab * (DTYPE_BYTES[s.compute_dtype] + 4 + 4)
    return s.batch_size * census.vocab * 4


# --------------------------------------------------------------------------------------------------
# Placement: contiguous units onto ordered devices
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Group:
    """Units that must share a device (an output head tied to the input embedding)."""

    names: list[str]
    costs: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.costs.values())


def _groups(census: _Census, s: _Settings) -> list[_Group]:
    groups: list[_Group] = []
    by_name: dict[str, _Group] = {}
    for unit in census.units:
        costs = _unit_costs(unit, census, s)
        if unit.name == census.head_name:
            costs["activations"] = costs.get("activations", 0) + _logits_bytes(census, s)
        if unit.tied_to is not None and unit.tied_to in by_name:
            group = by_name[unit.tied_to]
            group.names.append(unit.name)
            for key, value in costs.items():
                group.costs[key] = group.costs.get(key, 0) + value
        else:
            group = _Group([unit.name], costs)
            groups.append(group)
        by_name[unit.name] = group
    return groups


def _assign(costs: list[int], limits: list[int]) -> list[int] | None:
    """Greedy in-order fill: device index per group, or None if the groups do not fit.
    For contiguous placement onto ordered devices, filling each device as far as it goes is optimal."""
    assignment, device, load = [], 0, 0
    for cost in costs:
        while device < len(limits) and load + cost > limits[device]:
            device, load = device + 1, 0
        if device == len(limits):
            return None
        assignment.append(device)
        load += cost
    return assignment


def _balanced(costs: list[int], budgets: list[int] | None, n_devices: int) -> list[int] | None:
    """Contiguous placement minimising the largest device load (binary search on the load cap),
    within ``budgets`` if given. None if it cannot fit."""
    caps = budgets if budgets is not None else [sum(costs)] * n_devices
    if _assign(costs, caps) is None:
        return None
    low, high = max(costs, default=0), max(sum(costs), 1)
    while low < high:
        mid = (low + high) // 2
        if _assign(costs, [min(c, mid) for c in caps]) is None:
            low = mid + 1
        else:
            high = mid
    return _assign(costs, [min(c, low) for c in caps])


def _fits_on(groups: list[_Group], transient: int, devices: list[Device]) -> bool:
    limits = [d.budget_bytes - transient for d in devices]
    return min(limits) >= 0 and _assign([g.total for g in groups], limits) is not None


def _smallest_count(groups: list[_Group], transient: int, device: Device) -> int | None:
    """Fewest copies of ``device`` that hold the model, or None if even one group is too big."""
    limit = device.budget_bytes - transient
    costs = [g.total for g in groups]
    if not costs or limit < max(costs):
        return None
    low, high = 1, MAX_DEVICES_SEARCHED
    if _assign(costs, [limit] * high) is None:
        return None
    while low < high:  # fitting is monotone in the count
        mid = (low + high) // 2
        if _assign(costs, [limit] * mid) is None:
            low = mid + 1
        else:
            high = mid
    return low


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------

COMPONENT_LABELS = {
    "linear_weights": "linear layers",
    "other_weights": "embeddings, head, norms",
    "kv_cache": "KV cache",
    "activations": "activations (estimate)",
    "lora": "LoRA adapters (fp32)",
    "gradients": "gradients",
    "optimizer": "AdamW states (2 x fp32)",
    "master_weights": "fp32 master weights",
    "cuda_reserve": "CUDA context reserve",
}


@dataclasses.dataclass
class MemoryPlan:
    """Bytes a model needs under given settings, and how they sit on the given devices.

    ``components`` totals bytes by component (keys of COMPONENT_LABELS); ``per_device`` has the same
    breakdown for each device, ``cuda_reserve`` included. ``device_map`` / ``max_memory`` are ready for
    ``from_pretrained`` (None when it does not fit). ``min_devices`` is the smallest count of the first
    listed device kind that fits; ``devices_needed`` the same for the 80 GB and 141 GB GPU classes.
    """

    model: str
    quant: str
    double_quant: bool
    compute_dtype: str
    context_tokens: int
    batch_size: int
    training: bool
    lora_rank: int | None
    parameters: int
    quantised_parameters: int
    components: dict[str, int]
    devices: list[Device]
    per_device: list[dict[str, int]]
    fits: bool
    device_map: dict[str, int | str] | None
    max_memory: dict[int | str, int] | None
    min_devices: int | None
    devices_needed: dict[str, int | None]
    layers_per_device: list[int]
    assumptions: list[str]

    # -- headline numbers ------------------------------------------------------------------------
    @property
    def weights_bytes(self) -> int:
        return self.components.get("linear_weights", 0) + self.components.get("other_weights", 0)

    @property
    def kv_cache_bytes(self) -> int:
        return self.components.get("kv_cache", 0)

    @property
    def total_bytes(self) -> int:
        """Everything planned onto the devices, CUDA reserves included."""
        return sum(self.per_device_bytes)

    @property
    def per_device_bytes(self) -> list[int]:
        return [sum(d.values()) for d in self.per_device]

    @property
    def quant_label(self) -> str:
        return "nf4 + double quant" if self.quant == "nf4" and self.double_quant else self.quant

    def suggestion(self) -> str:
        kind = _suggestion_kind(self.devices)
        if kind is None:
            return ""
        if self.min_devices is None:
            return f"no number of {kind.name} fits it (one layer alone exceeds a device)"
        verb = "fits" if self.fits else "needed"
        return f"smallest count that fits: {self.min_devices} x {kind.name} ({verb}: {len(self.devices)} given)"

    def needs_text(self) -> str:
        parts = [f"{n} x {name}" if n is not None else f"no count of {name}"
                 for name, n in self.devices_needed.items()]
        return ", ".join(parts)

    # -- rendering ---------------------------------------------------------------------------------
    def _header(self) -> str:
        mode = "inference" if not self.training else (
            f"training, LoRA r={self.lora_rank}" if self.lora_rank else "full fine-tuning")
        return (f"{self.model} | {self.quant_label} | compute {self.compute_dtype} | "
                f"batch {self.batch_size} x {self.context_tokens} tokens | {mode}")

    def _device_rows(self) -> list[tuple[str, str, str, str, str, str]]:
        rows = []
        for i, (device, used) in enumerate(zip(self.devices, self.per_device)):
            total = sum(used.values())
            available = device.budget_bytes + device.reserve_bytes
            rows.append((f"{i}", device.name, f"{self.layers_per_device[i]}",
                         f"{total / GB:.1f}", f"{available / GB:.1f}",
                         "ok" if total <= available else "OVER"))
        return rows

    def __str__(self) -> str:
        lines = [f"Memory plan: {self._header()}", "(1 GB = 10^9 bytes; "
                 f"{CUDA_CONTEXT_RESERVE / GiB:.0f} GiB CUDA context reserve per GPU)", ""]
        width = max(len(v) for v in COMPONENT_LABELS.values()) + 2
        lines.append(f"{'component':<{width}}{'GB':>10}")
        for key, value in self.components.items():
            lines.append(f"{COMPONENT_LABELS[key]:<{width}}{value / GB:>10.2f}")
        lines.append(f"{'weights':<{width}}{self.weights_bytes / GB:>10.2f}")
        lines.append(f"{'total on devices':<{width}}{self.total_bytes / GB:>10.2f}")
        lines.append("")
        lines.append(f"{'device':<8}{'kind':<14}{'layers':>7}{'planned GB':>12}{'has GB':>10}  ")
        for index, name, layers, planned, has, ok in self._device_rows():
            lines.append(f"{index:<8}{name[:13]:<14}{layers:>7}{planned:>12}{has:>10}  {ok}")
        lines.append("")
        lines.append(f"fits: {'yes' if self.fits else 'NO'}" +
                     (f"; {self.suggestion()}" if self.suggestion() else ""))
        lines.append(f"needs: {self.needs_text()}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        comp = "".join(f"<tr><td>{esc(COMPONENT_LABELS[k])}</td><td style='text-align:right'>"
                       f"{v / GB:.2f}</td></tr>" for k, v in self.components.items())
        comp += (f"<tr><th>weights</th><th style='text-align:right'>{self.weights_bytes / GB:.2f}</th></tr>"
                 f"<tr><th>total on devices</th><th style='text-align:right'>{self.total_bytes / GB:.2f}"
                 f"</th></tr>")
        dev = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                      for row in self._device_rows())
        verdict = ("<b style='color:green'>fits</b>" if self.fits else "<b style='color:#b00'>does not fit</b>")
        return (f"<div><p><b>Memory plan</b>: {esc(self._header())}<br><small>1 GB = 10^9 bytes; "
                f"1 GiB CUDA context reserve per GPU</small></p>"
                f"<table><tr><th>component</th><th>GB</th></tr>{comp}</table>"
                f"<table><tr><th>device</th><th>kind</th><th>layers</th><th>planned GB</th><th>has GB</th>"
                f"<th></th></tr>{dev}</table>"
                f"<p>{verdict}. {esc(self.suggestion())}<br>needs: {esc(self.needs_text())}</p></div>")

    def to_frame(self):
        """Tidy DataFrame: one row per (device, component) with model, quant and settings columns."""
        import pandas as pd

        rows = []
        for index, (device, used) in enumerate(zip(self.devices, self.per_device)):
            for component, value in used.items():
                rows.append(dict(model=self.model, quant=self.quant, double_quant=self.double_quant,
                                 compute_dtype=self.compute_dtype, context_tokens=self.context_tokens,
                                 batch_size=self.batch_size, training=self.training,
                                 device=index, device_name=device.name, component=component,
                                 bytes=value, gb=value / GB))
        return pd.DataFrame(rows)


def _suggestion_kind(devices: list[Device]) -> Device | None:
    gpus = [d for d in devices if d.kind == "cuda"]
    if not gpus:
        return None
    first = gpus[0]
    known = _canonical_gpu_name(first.name)
    # A measured local GPU is suggested at its nominal size, not what happens to be free now.
    return Device(first.name, first.total_bytes, "cuda") if known is None else gpu(known)


def _parse_lora(lora: Any) -> tuple[int | None, tuple[str, ...] | None]:
    """LoRA settings from None, a rank, a dict {"r", "target_modules"} or a peft-like LoraConfig."""
    if lora is None:
        return None, None
    if isinstance(lora, bool):
        raise TypeError("lora must be a rank, a dict or a LoraConfig, not a bool")
    if isinstance(lora, int):
        rank, targets = lora, None
    elif isinstance(lora, dict):
        rank, targets = lora.get("r"), lora.get("target_modules")
    elif hasattr(lora, "r"):
        rank, targets = lora.r, getattr(lora, "target_modules", None)
    else:
        raise TypeError(f"lora must be None, a rank, a dict or a LoraConfig, got {type(lora).__name__}")
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"lora rank must be a positive integer, got r={rank!r}")
    if targets is None or targets == "all-linear":
        return rank, None
    if isinstance(targets, str):
        targets = [targets]
    return rank, tuple(sorted(targets))


def _settings(quant, double_quant, compute_dtype, context_tokens, batch_size, lora, training,
              gradient_checkpointing) -> _Settings:
    if quant not in QUANTS:
        raise ValueError(f"quant={quant!r}; expected one of {QUANTS}")
    if compute_dtype is None:
        compute_dtype = "bf16" if quant in ("nf4", "int8") else quant
    if compute_dtype not in DTYPE_BYTES:
        raise ValueError(f"compute_dtype={compute_dtype!r}; expected one of {tuple(DTYPE_BYTES)}")
    for name, value in (("context_tokens", context_tokens), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    rank, targets = _parse_lora(lora)
    if rank is not None and not training:
        training = True  # adapters are there to be trained
    if training and rank is None and quant in ("nf4", "int8"):
        raise ValueError(f"quant={quant!r} weights cannot be trained directly; pass lora= (QLoRA) "
                         f"or plan full fine-tuning with quant='bf16'")
    return _Settings(quant, bool(double_quant), compute_dtype, context_tokens, batch_size, bool(training),
                     rank, targets, bool(gradient_checkpointing))


def plan_memory(model: Any, *, quant: str = "nf4", double_quant: bool = True, context_tokens: int = 4096,
                batch_size: int = 1, gpus: Any = None, lora: Any = None, training: bool = False,
                compute_dtype: str | None = None, gradient_checkpointing: bool = True,
                trust_remote_code: bool = False) -> MemoryPlan:
    """Plan the memory of ``model`` under ``quant`` on ``gpus``.

    Args:
        model: a transformers config, a preset ("llama-3.1-405b", "allenai/Llama-3.1-Tulu-3-8B",
            "smollm2-135m", ...: see ``preset_names()``), a local folder or config.json, or a hub id
            (config.json only is fetched).
        quant: "nf4", "int8" (bitsandbytes) or "bf16" / "fp16" / "fp32" (unquantised).
        double_quant: NF4 double quantisation of the absmax constants (4.127 instead of 4.5 bits).
        context_tokens: tokens per sequence held in the KV cache (prompt + generated), or the
            training sequence length.
        batch_size: sequences at once.
        gpus: "4xA100-80GB", "2xH200", ["H200", "H200"], "cpu:64GB", a list of Device, or None for
            this machine's devices (``available_devices()``).
        lora: None, a rank, {"r": 16, "target_modules": [...]} or a peft LoraConfig; implies training.
            Targets default to every quantisable linear layer ("all-linear").
        training: plan training (no KV cache; saved activations, gradients, AdamW states).
        compute_dtype: dtype of unquantised weights, activations and KV cache; default bf16 for
            nf4/int8, else the quant dtype itself.
        gradient_checkpointing: training keeps only each layer's input (True) or all its activations.
        trust_remote_code: passed to AutoConfig for local folders and hub ids.

    Returns:
        A MemoryPlan (print it, or ``plan.to_frame()``).
    """
    settings = _settings(quant, double_quant, compute_dtype, context_tokens, batch_size, lora, training,
                         gradient_checkpointing)
    name, config = resolve_config(model, trust_remote_code=trust_remote_code)
    devices = parse_devices(gpus)
    census = _census(config)
    return _plan(name, census, settings, devices)


def _plan(name: str, census: _Census, s: _Settings, devices: list[Device]) -> MemoryPlan:
    groups = _groups(census, s)
    transient = _transient_bytes(census, s)
    costs = [g.total for g in groups]
    budgets = [d.budget_bytes - transient for d in devices]
    fits = min(budgets) >= 0 and _assign(costs, budgets) is not None
    # Where it fits: balanced within the budgets. Where not: balanced without limits, to show the need.
    assignment = _balanced(costs, budgets, len(devices)) if fits else _balanced(costs, None, len(devices))

    per_device: list[dict[str, int]] = [dict() for _ in devices]
    layers_per_device = [0] * len(devices)
    device_keys = _device_keys(devices)
    device_map: dict[str, int | str] = {}
    unit_is_layer = {u.name: u.is_layer for u in census.units}
    for group, index in zip(groups, assignment):
        for key, value in group.costs.items():
            per_device[index][key] = per_device[index].get(key, 0) + value
        for unit_name in group.names:
            device_map[unit_name] = device_keys[index]
            layers_per_device[index] += unit_is_layer[unit_name]
    for index, device in enumerate(devices):
        if transient:
            per_device[index]["activations"] = per_device[index].get("activations", 0) + transient
        if device.reserve_bytes:
            per_device[index]["cuda_reserve"] = device.reserve_bytes

    components: dict[str, int] = {}
    for key in COMPONENT_LABELS:
        total = sum(d.get(key, 0) for d in per_device)
        if total or key in ("linear_weights", "other_weights"):
            components[key] = total
    for used in per_device:
        for key in list(used):
            if used[key] == 0:
                del used[key]

    max_memory = None
    if fits:
        # Room for weights per device, so that device_map="auto" leaves the KV cache and activations free.
        max_memory = {}
        for index, device in enumerate(devices):
            others = sum(v for k, v in per_device[index].items()
                         if k not in ("linear_weights", "other_weights", "cuda_reserve"))
            max_memory[device_keys[index]] = max(device.budget_bytes - others, 0)

    kind = _suggestion_kind(devices)
    min_devices = _smallest_count(groups, transient, kind) if kind is not None else None
    reference = ([kind.name] if kind is not None and kind.name not in REFERENCE_GPUS else []) + list(REFERENCE_GPUS)
    devices_needed = {}
    for gpu_name in reference:
        device = kind if kind is not None and gpu_name == kind.name else gpu(gpu_name)
        devices_needed[gpu_name] = _smallest_count(groups, transient, device)

    assumptions = [
        f"{CUDA_CONTEXT_RESERVE / GiB:.0f} GiB per GPU reserved for the CUDA context",
        "activations are estimates: SDPA attention, " + (
            "gradient checkpointing" if s.training and s.gradient_checkpointing else
            "all activations saved" if s.training else "logits of the last position only"),
        "contiguous device_map, balanced by bytes",
    ]
    if s.quant == "nf4":
        assumptions.append(f"NF4 linear layers at {bits_per_weight('nf4', double_quant=s.double_quant):.3f} "
                           f"bits/weight; embeddings, head, norms in {s.compute_dtype}")
    if s.training and s.quant in ("nf4", "int8"):
        assumptions.append("QLoRA: unquantised weights cast to fp32 (peft prepare_model_for_kbit_training)")
    return MemoryPlan(
        model=name, quant=s.quant, double_quant=s.double_quant and s.quant == "nf4",
        compute_dtype=s.compute_dtype, context_tokens=s.context_tokens, batch_size=s.batch_size,
        training=s.training, lora_rank=s.lora_rank,
        parameters=census.quantisable_params + census.other_params,
        quantised_parameters=census.quantisable_params if s.quant in ("nf4", "int8") else 0,
        components=components, devices=list(devices), per_device=per_device, fits=fits,
        device_map=device_map if fits else None, max_memory=max_memory, min_devices=min_devices,
        devices_needed=devices_needed, layers_per_device=layers_per_device, assumptions=assumptions,
    )


def _device_keys(devices: list[Device]) -> list[int | str]:
    """device_map values: CUDA devices numbered in order, the CPU as "cpu"."""
    keys, cuda_index = [], 0
    for device in devices:
        if device.kind == "cpu":
            keys.append("cpu")
        else:
            keys.append(cuda_index)
            cuda_index += 1
    return keys


# --------------------------------------------------------------------------------------------------
# Grid for the notebook chart
# --------------------------------------------------------------------------------------------------

def memory_grid(models=("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"), quants=("bf16", "int8", "nf4"),
                *, double_quant: bool = True, context_tokens: int = 4096, batch_size: int = 1):
    """Tidy DataFrame, one row per (model, quant): weights_gb, kv_gb, activations_gb, total_gb (one
    device's worth: no CUDA reserve), plus the counts of 80 GB and 141 GB GPUs needed."""
    import pandas as pd

    rows = []
    for model in models:
        name, config = resolve_config(model)
        census = _census(config)
        for quant in quants:
            s = _settings(quant, double_quant, None, context_tokens, batch_size, None, False, True)
            groups = _groups(census, s)
            transient = _transient_bytes(census, s)
            totals: dict[str, int] = {}
            for group in groups:
                for key, value in group.costs.items():
                    totals[key] = totals.get(key, 0) + value
            weights = totals["linear_weights"] + totals["other_weights"]
            activations = totals.get("activations", 0) + transient
            rows.append(dict(
                model=name, quant=quant, weights_gb=weights / GB, kv_gb=totals.get("kv_cache", 0) / GB,
                total_gb=(weights + totals.get("kv_cache", 0) + activations) / GB,
                activations_gb=activations / GB,
                gpus_80gb=_smallest_count(groups, transient, gpu("H100-80GB")),
                gpus_141gb=_smallest_count(groups, transient, gpu("H200")),
            ))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Loader hooks
# --------------------------------------------------------------------------------------------------

def check_fits(plan: MemoryPlan) -> None:
    """Raise DoesNotFitError (a MemoryError) naming need vs room per device if ``plan`` does not fit."""
    if plan.fits:
        return
    lines = [f"{plan.model} ({plan.quant_label}, batch {plan.batch_size} x {plan.context_tokens} tokens) "
             f"does not fit on {len(plan.devices)} device(s); total needed "
             f"{(plan.total_bytes) / GB:.1f} GB:"]
    for index, (device, used) in enumerate(zip(plan.devices, plan.per_device)):
        available = device.budget_bytes + device.reserve_bytes
        lines.append(f"  device {index} ({device.name}): needs {sum(used.values()) / GB:.1f} GB, "
                     f"has {available / GB:.1f} GB"
                     + (f" ({device.reserve_bytes / GiB:.0f} GiB of it kept for the CUDA context)"
                        if device.reserve_bytes else ""))
    if plan.suggestion():
        lines.append(f"  {plan.suggestion()}")
    lines.append(f"  needs: {plan.needs_text()}")
    raise DoesNotFitError("\n".join(lines), plan)


def bnb_config_for(plan: MemoryPlan) -> dict | None:
    """BitsAndBytesConfig keyword arguments matching the plan (None for unquantised plans)."""
    import torch

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[plan.compute_dtype]
    if plan.quant == "nf4":
        return dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=plan.double_quant,
                    bnb_4bit_compute_dtype=compute)
    if plan.quant == "int8":
        return dict(load_in_8bit=True)
    return None


def from_pretrained_kwargs(plan: MemoryPlan) -> dict:
    """Keyword arguments for AutoModelForCausalLM.from_pretrained that load the model as planned."""
    import torch
    from transformers import BitsAndBytesConfig

    check_fits(plan)
    kwargs: dict[str, Any] = dict(
        dtype={"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[plan.compute_dtype],
        device_map=plan.device_map, max_memory=plan.max_memory)
    bnb = bnb_config_for(plan)
    if bnb is not None:
        kwargs["quantization_config"] = BitsAndBytesConfig(**bnb)
    return kwargs


def plan_for_load(name_or_path: Any, *, quant: str | None = None, dtype: Any = None, double_quant: bool = True,
                  trust_remote_code: bool = False, context_tokens: int = 2048, batch_size: int = 1,
                  gpus: Any = None, lora: Any = None, training: bool = False) -> MemoryPlan:
    """Plan a load on this machine (or ``gpus``) from the config alone; raise DoesNotFitError if it
    cannot fit. ``quant`` None means unquantised in ``dtype`` (torch dtype or name; default: the
    checkpoint's own dtype, else bf16)."""
    name, config = resolve_config(name_or_path, trust_remote_code=trust_remote_code)
    dtype_name = _dtype_name(dtype) if dtype is not None else None
    if quant is None:
        quant = dtype_name or _dtype_name(getattr(config, "dtype", None) or
                                          getattr(config, "torch_dtype", None) or "bf16")
    plan = plan_memory(config, quant=quant, double_quant=double_quant, context_tokens=context_tokens,
                       batch_size=batch_size, gpus=gpus, lora=lora, training=training,
                       compute_dtype=dtype_name if quant in ("nf4", "int8") else None)
    plan.model = name
    check_fits(plan)
    return plan


def _dtype_name(dtype: Any) -> str:
    text = str(dtype).replace("torch.", "").lower()
    names = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
             "float32": "fp32", "fp32": "fp32", "float": "fp32"}
    if text not in names:
        raise ValueError(f"dtype={dtype!r} not understood; expected bf16, fp16 or fp32")
    return names[text]


# --------------------------------------------------------------------------------------------------
# Measuring a loaded model
# --------------------------------------------------------------------------------------------------

def measure_model_bytes(model) -> int:
    """Bytes a loaded model really holds: parameters, buffers and bitsandbytes' quantisation state.

    ``get_memory_footprint()`` counts parameters and buffers only, which leaves out each Linear4bit's
    ``weight.quant_state`` (absmax, code book and, with double quant, the nested state) and each
    Linear8bitLt's row scales. Tensors are counted once per storage, so tied weights and shared
    views are not counted twice."""
    import torch

    storages: dict[int, int] = {}

    def add(tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        if storage.nbytes() and storage.data_ptr():
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())

    def add_state(state, depth: int = 0) -> None:
        # QuantState (4-bit) and MatmulLtState (8-bit) hold tensors and possibly a nested QuantState.
        if state is None or depth > 3:
            return
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                add(value)
            elif type(value).__name__ in ("QuantState", "MatmulLtState"):
                add_state(value, depth + 1)

    for tensor in list(model.parameters()) + list(model.buffers()):
        add(tensor)
        for attribute in ("quant_state", "CB", "SCB"):
            value = getattr(tensor, attribute, None)
            if isinstance(value, torch.Tensor):
                add(value)
            elif value is not None:
                add_state(value)
    for module in model.modules():
        state = getattr(module, "state", None)
        if type(state).__name__ == "MatmulLtState":
            add_state(state)
    return sum(storages.values())
