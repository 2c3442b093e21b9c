"""A lean forward of Llama-family causal LMs for sampling: fused float32 weights and a static KV cache.

transformers' forward is written for every use (training, many cache types, many attention kernels);
at decode time, one token per row, its per-operation bookkeeping (mask building, cache classes, peft's
LoRA wrappers, tens of kernels per layer) weighs on a small model. This forward computes the same
function, up to float32 rounding, with fewer and faster kernels:

* weights snapshotted once per sampling call: LoRA adapters merged into each projection
  (``W + scaling * B @ A``, in float32, equal to the separate paths up to float32 rounding), q, k and v
  concatenated into one product, gate and up into another;
* one preallocated KV cache for all layers, written in place at each step's column;
* the attention mask is a view of one boolean row mask (real tokens) per batch row; a query also sees
  its own column, so left-padding positions never attend to nothing;
* float32 products from weights reordered once into MKL's packed layout for the decode batch
  (:meth:`LlamaDecoder.pack`; the same sums, a faster small-batch kernel);
* RMSNorm through ``torch.nn.functional.rms_norm``, the rotary embedding from the model's own module
  (every rope scaling it supports), attention through ``scaled_dot_product_attention`` with the query
  heads of a key/value group folded into one query block (no repeated keys).

Only float32 weights without autocast are taken (merging adapters into bf16 weights would round
the adapters' delta onto the bf16 grid): :func:`decoder_for` returns None otherwise, and for models
that are not plain Llama (other attention variants, biases on some projections only, quantised layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("llama",)


@dataclass
class _Layer:
    norm_attn: torch.Tensor
    qkv: torch.Tensor          # (q + 2 kv) x hidden
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    norm_mlp: torch.Tensor
    gate_up: torch.Tensor      # 2 intermediate x hidden
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


class KVCache:
    """Keys and values of every layer in one tensor ``(layers, 2, rows, kv heads, capacity, head dim)``;
    ``length`` columns are filled. Row selection and repetition (the sampler's batch edits) copy rows."""

    def __init__(self, data: torch.Tensor):
        self.data = data
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.data.shape[4]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.data = self.data[:, :, indices]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.data = self.data.repeat_interleave(repeats, dim=2)

    def get_seq_length(self) -> int:
        return self.length


def _lora_parts(module, where: str):
    """(base layer, [(B, A, scaling), ...] of the active adapters) of a peft LoRA layer, or (module, [])."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # peft absent: no LoRA layers to merge
        return module, []
    if not isinstance(module, LoraLinear):
        return module, []
    adapters = []
    if not module.disable_adapters and not module.merged:
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            if name in module.lora_variant:
                raise _Unsupported(f"{where}: a LoRA variant (DoRA, ...)")
            if module.fan_in_fan_out:
                raise _Unsupported(f"{where}: fan_in_fan_out LoRA")
            adapters.append((module.lora_B[name].weight.detach(), module.lora_A[name].weight.detach(),
                             float(module.scaling[name])))
    return module.base_layer, adapters


class _Unsupported(Exception):
    pass


def _fused(modules: list, where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (weight, bias) for linear layers applied to the same input, outputs concatenated; LoRA
    adapters merged in: ``W + scaling * B @ A`` written straight into the fused weight (one addmm)."""
    parts = [_lora_parts(m, where) for m in modules]
    for base, _ in parts:
        if type(base) is not torch.nn.Linear:
            raise _Unsupported(f"{where}: {type(base).__name__} is not a torch Linear")
    first = parts[0][0].weight
    rows = sum(base.weight.shape[0] for base, _ in parts)
    if len(parts) == 1 and not parts[0][1]:
        weight = first.detach()  # nothing to merge or concatenate: the model's own tensor
    else:
        weight = first.new_empty((rows, first.shape[1]))
        row = 0
        for base, adapters in parts:
            block = weight[row:row + base.weight.shape[0]]
            if adapters:
                lora_b, lora_a, scaling = adapters[0]
                torch.addmm(base.weight.detach(), lora_b, lora_a, alpha=scaling, out=block)
                for lora_b, lora_a, scaling in adapters[1:]:
                    block.addmm_(lora_b, lora_a, alpha=scaling)
            else:
                block.copy_(base.weight.detach())
            row += base.weight.shape[0]
    biases = [base.bias for base, _ in parts]
    if all(b is None for b in biases):
        return weight, None
    if any(b is None for b in biases):
        raise _Unsupported(f"{where}: bias on some projections only")
    return weight, torch.cat([b.detach() for b in biases])


class LlamaDecoder:
    """Fused float32 weights of a Llama-family model (adapters merged), for :meth:`forward` with a
    :class:`KVCache`. Built from the model's current weights; rebuild after the weights change."""

    def __init__(self, model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = base.config
        self.config = config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        inner = base.model
        self.embed = inner.embed_tokens.weight.detach()
        self.rotary = inner.rotary_emb
        self.norm = inner.norm.weight.detach()
        self.head, self.head_bias = _fused([base.lm_head], "lm_head")
        self.layers = []
        with torch.no_grad():
            for i, layer in enumerate(inner.layers):
                attn, mlp = layer.self_attn, layer.mlp
                where = f"layer {i}"
                qkv, qkv_bias = _fused([attn.q_proj, attn.k_proj, attn.v_proj], where)
                o, o_bias = _fused([attn.o_proj], where)
                gate_up, gate_up_bias = _fused([mlp.gate_proj, mlp.up_proj], where)
                down, down_bias = _fused([mlp.down_proj], where)
                self.layers.append(_Layer(layer.input_layernorm.weight.detach(), qkv, qkv_bias, o, o_bias,
                                          layer.post_attention_layernorm.weight.detach(), gate_up, gate_up_bias,
                                          down, down_bias))

        self.packed_rows = 0
        self.packed: dict[int, torch.Tensor] = {}   # id(weight) -> MKL-packed copy for packed_rows rows

    def pack(self, rows: int) -> None:
        """Reorder every weight into MKL's packed layout for products of ``rows`` input rows (the decode
        batch): small-batch float32 products run faster from it. Products of up to ``rows`` rows (and
        more than half as many) use it, zero-padded; others use the plain weight. No-op off the CPU or
        without MKL. The packed copies take about as much memory as the weights."""
        if (self.head.device.type != "cpu" or not _mkl_packing_available()
                or self.packed_rows // 2 < rows <= self.packed_rows):
            return  # the packed weights serve this batch (zero-padded up to packed_rows)
        weights = [self.head] + [w for layer in self.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        self.packed = {id(w): torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in weights}
        self.packed_rows = rows

    def unpack(self) -> None:
        self.packed, self.packed_rows = {}, 0

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        packed = self.packed.get(id(weight)) if self.packed_rows else None
        rows = x.numel() // x.shape[-1]
        if packed is None or not self.packed_rows // 2 < rows <= self.packed_rows:
            return F.linear(x, weight, bias)
        flat = x.reshape(rows, x.shape[-1])
        if rows < self.packed_rows:
            flat = F.pad(flat, (0, 0, 0, self.packed_rows - rows))
        out = torch.ops.mkl._mkl_linear(flat, packed, weight, bias, self.packed_rows)
        return out[:rows].view(*x.shape[:-1], weight.shape[0])

    def new_cache(self, rows: int, capacity: int) -> KVCache:
        data = self.embed.new_empty((len(self.layers), 2, rows, self.kv_heads, capacity, self.head_dim))
        return KVCache(data)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache,
                key_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the last position of each row, after writing the new tokens' keys and values at
        columns ``cache.length ..`` of ``cache``.

        ``input_ids``/``position_ids``: (rows, new); ``key_mask``: (rows, >= cache.length + new) booleans,
        True where a column holds a real token (False: left padding).
        """
        rows, new = input_ids.shape
        start, end = cache.length, cache.length + new
        if end > cache.capacity:
            raise ValueError(f"KV cache full: {end} columns needed, capacity {cache.capacity}")
        if key_mask.shape[0] != rows or key_mask.shape[1] < end:
            raise ValueError(f"key_mask of shape {tuple(key_mask.shape)} for {rows} rows and {end} columns")
        hidden = F.embedding(input_ids, self.embed)
        cos, sin = self.rotary(hidden, position_ids)           # (rows, new, head_dim)
        cos, sin = cos[:, None], sin[:, None]                  # broadcast over heads
        half = self.head_dim // 2
        group = self.heads // self.kv_heads
        mask = key_mask[:, None, None, :end].bool()            # (rows, 1, 1, keys)
        if new > 1:  # prefill: causal within the new columns; every query sees its own column
            query_cols = torch.arange(start, end, device=hidden.device)[:, None]
            key_cols = torch.arange(end, device=hidden.device)[None, :]
            mask = (mask & (key_cols <= query_cols)) | (key_cols == query_cols)
        width = self.heads * self.head_dim
        kv_width = self.kv_heads * self.head_dim
        shape = (rows, new)
        for i, layer in enumerate(self.layers):
            x = F.rms_norm(hidden, (hidden.shape[-1],), layer.norm_attn, self.eps)
            qkv = self._linear(x, layer.qkv, layer.qkv_bias)
            # q and k rotate together: (rows, new, heads + kv heads, head_dim) -> heads first
            qk = qkv[..., :width + kv_width].view(*shape, self.heads + self.kv_heads, self.head_dim).transpose(1, 2)
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rotated * sin
            q, k = qk[:, :self.heads], qk[:, self.heads:]
            v = qkv[..., width + kv_width:].view(*shape, self.kv_heads, self.head_dim).transpose(1, 2)
            cache.data[i, 0, :, :, start:end] = k
            cache.data[i, 1, :, :, start:end] = v
            keys, values = cache.data[i, 0, :, :, :end], cache.data[i, 1, :, :, :end]
            if new == 1:  # the group's query heads as one block of queries against their shared keys
                out = F.scaled_dot_product_attention(q.reshape(rows, self.kv_heads, group, self.head_dim),
                                                     keys, values, attn_mask=mask)
            else:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=group > 1)
            out = out.reshape(rows, self.heads, new, self.head_dim).transpose(1, 2).reshape(*shape, width)
            hidden = hidden + self._linear(out, layer.o, layer.o_bias)
            x = F.rms_norm(hidden, (hidden.shape[-1],), layer.norm_mlp, self.eps)
            gate, up = self._linear(x, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
            hidden = hidden + self._linear(F.silu(gate) * up, layer.down, layer.down_bias)
        cache.length = end
        last = F.rms_norm(hidden[:, -1], (hidden.shape[-1],), self.norm, self.eps)
        return self._linear(last, self.head, self.head_bias)


def _mkl_packing_available() -> bool:
    return (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
            and hasattr(torch.ops.mkl, "_mkl_linear"))


def decoder_for(model) -> LlamaDecoder | None:
    """A :class:`LlamaDecoder` for ``model``, or None where this forward would not compute the model's
    function exactly as transformers does (then the caller uses the model's own forward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return None
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return None
    weight = base.lm_head.weight if hasattr(base, "lm_head") else None
    if weight is None or weight.dtype != torch.float32 or torch.is_autocast_enabled(weight.device.type):
        return None
    if any(p.dtype != torch.float32 for p in base.parameters()):
        return None
    try:
        return LlamaDecoder(model)
    except _Unsupported:
        return None
