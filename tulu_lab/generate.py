"""Batched sampling with a KV cache, returning text, token ids, per-token log-probs and stop status.

One decode loop serves evaluation (greedy), the prompt probe and RLVR rollouts (temperature sampling,
k samples per prompt). What it does that ``model.generate`` does not:

* returns the log-prob of every sampled token under ``softmax(logits / temperature)``, the quantity
  the RL losses need (greedy decoding reports plain ``log_softmax(logits)``);
* prefills each distinct prompt once and copies its KV cache for the k samples (``num_samples``);
* drops finished rows from the batch as it goes, so a few long answers do not keep paying for the
  rest of the batch;
* float32 Llama-family models decode through :mod:`tulu_lab.llama_decode`: LoRA adapters merged and
  q/k/v and gate/up fused into one weight each, one static KV cache written in place, a few kernels per
  layer instead of transformers' general forward (same function up to float32 rounding);
* other models run their own forward, writing each token's keys and values into room reserved in the
  KV cache (no copy of the whole cache per token), with LoRA adapters merged into one fp32 weight per
  layer when computing in fp32, a lean unmerged forward under bf16 (see ``_fast_adapters``);
* slices a preallocated attention mask;
* sorts prompts by length before batching (less left padding) and returns results in input order;
* computes a prefix that every prompt of a batch shares (few-shot exemplars: often 90% of the prompt)
  once and copies its KV cache to each row.

Prompts are either already-rendered strings or message lists, rendered with the tokenizer's chat
template (``tulu_lab.chat.install_tulu_template`` sets the Tülu one).
"""

from __future__ import annotations

import contextlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import torch


@dataclass
class Generation:
    """One sampled response."""
    prompt: str
    text: str
    token_ids: list[int]
    logprobs: list[float]
    stopped: bool                      # ended on an EOS token
    finish_reason: str = "length"      # "eos" | "stop" (a stop string) | "length"
    prompt_index: int = 0              # which prompt of the call it answers
    extra: dict = field(default_factory=dict)


def format_prompt(prompt, tokenizer) -> str:
    """A message list rendered with the tokenizer's chat template (generation prompt added); strings pass."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("prompt is a message list but the tokenizer has no chat template; "
                         "install one with tulu_lab.chat.install_tulu_template(tokenizer)")
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS plus the model's generation_config EOS ids."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in ([gen_eos] if isinstance(gen_eos, int) else gen_eos))
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an EOS token")
    return sorted(ids)


CDF_BLOCK = 512  # vocabulary entries per block of the two-level inverse-CDF search


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None):
    """Pick one token per row; returns (tokens, log-probs under softmax(logits / T)).

    Greedy when temperature == 0. Top-p filtering shapes the sampling distribution only: the log-prob
    reported is that of the untruncated tempered distribution, which is what the policy assigns.
    Sampling inverts the cumulative distribution (float64) with one uniform draw per row: the same
    distribution as ``torch.multinomial``, without drawing a random number per vocabulary entry
    (see :func:`_invert_cdf`).
    """
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
        scaled = logits
        log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    else:
        scaled = logits / temperature if temperature != 1.0 else logits
        top = scaled.amax(dim=-1, keepdim=True)
        weights = torch.sub(scaled, top).exp_()  # unnormalised probabilities, largest 1
        log_norm = top + torch.log(weights.sum(dim=-1, keepdim=True))
        if top_p < 1.0:
            probs = weights / weights.sum(dim=-1, keepdim=True)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # keep the smallest nucleus
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            weights = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        draw = torch.rand((weights.size(0), 1), generator=generator, dtype=torch.float64, device=weights.device)
        tokens = _invert_cdf(weights, draw)
    return tokens, (scaled.gather(-1, tokens[:, None]) - log_norm).squeeze(-1)


def _invert_cdf(weights: torch.Tensor, draw: torch.Tensor, block: int = CDF_BLOCK) -> torch.Tensor:
    """Per row, the first entry whose cumulative weight (float64) exceeds ``draw`` x the row's total;
    zero-weight entries are never picked.

    Two levels: float64 sums of blocks of ``block`` entries locate the block, a float64 cumulative sum
    inside it the entry; the float64 work is one pass over the vocabulary plus one block per row
    instead of a cumulative sum of every entry.
    """
    rows, vocab = weights.shape
    pad = -vocab % block
    if pad:
        weights = torch.nn.functional.pad(weights, (0, pad))
    blocks = weights.view(rows, -1, block).sum(dim=-1, dtype=torch.float64).cumsum(dim=-1)
    target = draw * blocks[:, -1:]
    index = torch.searchsorted(blocks, target, right=True).clamp(max=blocks.size(1) - 1)  # (rows, 1)
    before = torch.where(index > 0, blocks.gather(1, (index - 1).clamp(min=0)), torch.zeros_like(target))
    starts = index * block + torch.arange(block, device=weights.device)
    inside = weights.gather(1, starts).double().cumsum(dim=-1) + before
    offset = torch.searchsorted(inside, target, right=True).clamp(max=block - 1)
    # rounding can put the target past a block's last positive entry: step back to it
    positive = weights.gather(1, starts) > 0
    last_positive = block - 1 - positive.flip(-1).int().argmax(dim=-1, keepdim=True)
    offset = torch.minimum(offset, last_positive)
    return (index * block + offset).squeeze(-1).clamp(max=vocab - 1)


def check_threads(threads, where: str) -> None:
    """``threads`` arguments are None (torch's setting), a positive int, or "auto"."""
    if not (threads is None or threads == "auto" or (isinstance(threads, int) and threads >= 1)):
        raise ValueError(f"{where}: threads must be None, 'auto' or a positive int, got {threads!r}")


@contextmanager
def num_threads(count: int | None):
    """Run the block with ``count`` intra-op threads (None: leave them), then restore the previous count."""
    previous = torch.get_num_threads()
    if count is not None and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def fastest_threads(rows: int, width: int, out_width: int, max_threads: int | None = None, repeats: int = 3) -> int:
    """The thread count, 1 .. ``max_threads`` (default: the current count), that runs a small piece of
    a transformer layer fastest right now: a ``(rows x width) @ (width x out_width)`` float32 product
    and four elementwise kernels on its output (best of ``repeats``).

    On an idle machine more threads win; on a shared one every multi-threaded kernel waits for its
    slowest thread to be scheduled again (milliseconds each time), which can make a decode step, or a
    training forward with its thousands of elementwise kernels, several times slower than on one thread.
    """
    max_threads = max_threads or torch.get_num_threads()
    if max_threads <= 1:
        return 1
    a, b = torch.randn(rows, width), torch.randn(width, out_width)

    def layer_piece():
        y = a @ b
        y = torch.nn.functional.silu(y) * y
        return (y + y).sum()

    best_seconds, best = float("inf"), max_threads
    for count in range(max_threads, 0, -1):
        with num_threads(count):
            layer_piece()  # warm-up: thread pools and kernel selection
            seconds = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                layer_piece()
                seconds = min(seconds, time.perf_counter() - started)
        if seconds < best_seconds:
            best_seconds, best = seconds, count
    return best


@lru_cache(maxsize=None)
def _reserved_layer_class():
    from transformers.cache_utils import DynamicLayer  # imported on first use: loading transformers is slow

    class ReservedLayer(DynamicLayer):
        """A KV-cache layer with room reserved for the tokens still to come.

        transformers' DynamicLayer concatenates every new token onto the whole cache, copying all of it
        at every decoding step; this one writes the new keys and values into spare room and returns views,
        growing (by doubling) only if the room runs out. Row selection and repetition act on the room too.
        """

        reserve = 0  # set on a subclass per call (transformers builds layers without arguments)

        def __init__(self):
            super().__init__()
            self._keys = self._values = None
            self._length = 0

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            new = key_states.shape[-2]
            end = self._length + new
            if self._keys is None or end > self._keys.shape[-2]:
                capacity = max(end + self.reserve, 2 * end)
                keys = key_states.new_empty(key_states.shape[:-2] + (capacity, key_states.shape[-1]))
                values = value_states.new_empty(value_states.shape[:-2] + (capacity, value_states.shape[-1]))
                if self._length:
                    keys[..., :self._length, :] = self._keys[..., :self._length, :]
                    values[..., :self._length, :] = self._values[..., :self._length, :]
                self._keys, self._values = keys, values
            self._keys[..., self._length:end, :] = key_states
            self._values[..., self._length:end, :] = value_states
            self._length = end
            self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
            return self.keys, self.values

        def _reindex(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            self._keys, self._values = keys, values
            self.keys, self.values = keys[..., :self._length, :], values[..., :self._length, :]

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._length:
                self._reindex(self._keys.repeat_interleave(repeats, dim=0), self._values.repeat_interleave(repeats, dim=0))

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self._length:
                self._reindex(self._keys[indices], self._values[indices])

    return ReservedLayer


def _reserved_cache(reserve: int):
    """An empty cache whose layers keep ``reserve`` free positions for the tokens to be generated."""
    from transformers.cache_utils import Cache

    layer = type("ReservedLayer", (_reserved_layer_class(),), {"reserve": reserve})
    return Cache(layer_class_to_replicate=layer)


def _lora_layers(model) -> list:
    """peft LoRA linear layers that :func:`_fast_adapters` can stand in for: one active plain LoRA
    adapter (no DoRA or other variant), not merged, adapters enabled, eval mode. Empty when any is not."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return []
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for layer in layers:
        active = [a for a in layer.active_adapters if a in layer.lora_A]
        if (layer.disable_adapters or layer.merged or len(active) != 1 or active[0] in layer.lora_variant
                or layer.lora_A[active[0]].training):
            return []
    return layers


@contextmanager
def _fast_adapters(model):
    """Decode through peft LoRA layers with fewer operations, computing the same function.

    At decode time each token is a small matmul, and the per-operation cost of a LoRA layer (four
    extra kernels and peft's Python bookkeeping) weighs as much as the arithmetic. Inside this context:

    * fp32 weights without autocast: each layer uses one merged weight ``W + scaling * B @ A``, built
      once per call in fp32 (equal to the separate paths up to fp32 rounding);
    * otherwise (bf16 weights or autocast): merging would round the small LoRA delta to the weight's
      bf16 grid and sample from a different policy, so the layers keep separate matmuls with a lean
      forward, ``base(x) + lora_B(lora_A(x)) * scaling`` with peft's casts, the same kernels.

    The model runs in eval mode here (dropout is the identity); its parameters are not touched, the
    layers' forwards are restored on exit.
    """
    layers = _lora_layers(model)
    for layer in layers:
        layer.forward = _merged_forward(layer) if _can_merge(layer) else _lean_forward(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _active_adapter(layer) -> str:
    return next(a for a in layer.active_adapters if a in layer.lora_A)


def _can_merge(layer) -> bool:
    weight = layer.base_layer.weight
    return weight.dtype == torch.float32 and not torch.is_autocast_enabled(weight.device.type)


def _merged_forward(layer):
    base = layer.base_layer
    with torch.no_grad():
        merged = base.weight + layer.get_delta_weight(_active_adapter(layer)).to(base.weight.dtype)
    linear = torch.nn.functional.linear

    def forward(x, *args, **kwargs):
        return linear(x, merged, base.bias)

    return forward


def _lean_forward(layer):
    name = _active_adapter(layer)
    base = layer.base_layer
    lora_a, lora_b, scaling = layer.lora_A[name], layer.lora_B[name], layer.scaling[name]
    cast = getattr(layer, "cast_input_dtype_enabled", True)
    linear = torch.nn.functional.linear

    def forward(x, *args, **kwargs):
        result = base(x, *args, **kwargs)
        result_dtype = result.dtype
        if cast and x.dtype != lora_a.weight.dtype:
            x = x.to(lora_a.weight.dtype)
        result = result + linear(linear(x, lora_a.weight, lora_a.bias), lora_b.weight, lora_b.bias) * scaling
        return result.to(result_dtype)

    return forward


def _decoder(model):
    from tulu_lab.llama_decode import decoder_for

    return decoder_for(model)


MIN_SHARED_PREFIX = 32  # tokens; below this a separate prefill of the common prefix saves too little


def shared_prefix_length(token_lists: Sequence[Sequence[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """Tokens at the start of every prompt of a batch (0 if fewer than ``minimum``, or one prompt).

    At least one token of each prompt is left out, so every row still has a token to prefill.
    """
    if len(token_lists) < 2:
        return 0
    first, length = token_lists[0], min(len(t) for t in token_lists) - 1
    for other in token_lists[1:]:
        n = 0
        while n < length and other[n] == first[n]:
            n += 1
        length = n
    return length if length >= minimum else 0


class _ModelSteps:
    """The model's own forward with a :func:`_reserved_cache` (any model, dtype or autocast)."""

    def __init__(self, model):
        self.model = model

    def new_cache(self, rows: int, capacity: int, reserve: int):
        return _reserved_cache(reserve)

    def __call__(self, ids, key_mask, positions, cache):
        out = self.model(input_ids=ids, attention_mask=key_mask, position_ids=positions, cache=cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1, :]


PACK_MIN_NEW_TOKENS = 32  # packing the weights costs about as much as 5-10 decode steps


class _DecoderSteps:
    """:class:`tulu_lab.llama_decode.LlamaDecoder` with its static cache (float32 Llama models); ``pack``:
    decode from weights packed for the batch (worth it for long enough decodes)."""

    def __init__(self, decoder, pack: bool = True):
        self.decoder = decoder
        self.pack = pack

    def new_cache(self, rows: int, capacity: int, reserve: int):
        return self.decoder.new_cache(rows, capacity)

    def __call__(self, ids, key_mask, positions, cache):
        if self.pack and ids.shape[1] == 1:  # decoding: weights packed for this batch size (once; reused while it holds)
            self.decoder.pack(ids.shape[0])
        return self.decoder.forward(ids, positions, cache, key_mask)


@torch.inference_mode()
def _generate_batch(model, tokenizer, token_lists: list[list[int]], *, repeats: int, max_new_tokens: int,
                    temperature: float, top_p: float, generator, eos_ids: list[int],
                    stop: Sequence[str] | None, compact_every: int = 8, steps=None):
    """Decode one batch of distinct tokenised prompts, ``repeats`` samples each. Returns rows in
    prompt-major order. ``steps`` runs the forward passes (default: the model's own forward)."""
    device = next(model.parameters()).device
    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs tokenizer.padding_side == 'left'")
    steps = steps or _ModelSteps(model)
    shared = shared_prefix_length(token_lists)
    enc = tokenizer.pad({"input_ids": [ids[shared:] for ids in token_lists]}, padding=True, return_tensors="pt")
    ids, suffix_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    # The prompt mask covers prefix + left-padded suffix: [prefix][pad][suffix]; positions skip the pads.
    prompt_mask = torch.cat([suffix_mask.new_ones((len(token_lists), shared)), suffix_mask], dim=-1)
    width = prompt_mask.size(1)
    cache = steps.new_cache(1 if shared else len(token_lists), width + max_new_tokens, max_new_tokens)
    if shared:  # e.g. few-shot exemplars: their keys and values are computed once, then copied per row
        steps(torch.tensor([token_lists[0][:shared]], device=device), prompt_mask[:1, :shared],
              torch.arange(shared, device=device)[None], cache)
        cache.batch_repeat_interleave(len(token_lists))
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    logits = steps(ids, prompt_mask, positions, cache)
    if repeats > 1:  # one prefill per prompt, the cache copied for its samples
        cache.batch_repeat_interleave(repeats)
        logits = logits.repeat_interleave(repeats, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(repeats, dim=0)
        positions = positions.repeat_interleave(repeats, dim=0)

    n = logits.shape[0]
    eos = torch.tensor(eos_ids, device=device)
    # Per original row: sampled tokens and log-probs by step; every live row writes column `step`.
    tokens_out = torch.zeros((n, max_new_tokens), dtype=torch.long, device=device)
    logprobs_out = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    finish = ["length"] * n
    # The attention mask for the whole decode, sliced per step instead of grown per step.
    mask = torch.cat([prompt_mask, prompt_mask.new_ones((n, max_new_tokens))], dim=-1)
    active = torch.arange(n, device=device)        # original row of each row still in the batch
    alive = torch.ones(n, dtype=torch.bool, device=device)
    next_pos = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        tokens, logprobs = sample_next(logits, temperature, top_p, generator)
        rows = active[alive]
        tokens_out[rows, step] = tokens[alive]
        logprobs_out[rows, step] = logprobs[alive]
        lengths[rows] = step + 1
        ended = alive & torch.isin(tokens, eos)
        for row in active[ended].tolist():
            finish[row] = "eos"
        alive &= ~ended
        if stop:
            for i in alive.nonzero().squeeze(-1).tolist():
                row = int(active[i])
                if any(s in tokenizer.decode(tokens_out[row, max(0, step - 23):step + 1].tolist()) for s in stop):
                    finish[row] = "stop"
                    alive[i] = False
        if not bool(alive.any()) or step == max_new_tokens - 1:
            break
        # Drop finished rows every few steps: fewer rows to decode, at the price of a cache copy.
        n_alive = int(alive.sum())
        if n_alive < len(alive) and (step % compact_every == 0 or n_alive <= len(alive) // 2):
            index = alive.nonzero().squeeze(-1)
            cache.batch_select_indices(index)
            active, tokens, mask, next_pos, alive = (active[index], tokens[index], mask[index],
                                                     next_pos[index], alive[index])
        tokens = torch.where(alive, tokens, torch.full_like(tokens, tokenizer.pad_token_id))
        logits = steps(tokens[:, None], mask[:, :width + step + 1], next_pos, cache)
        next_pos = next_pos + 1
    lengths = lengths.tolist()
    tokens_list = [row[:length] for row, length in zip(tokens_out.tolist(), lengths)]
    logprobs_list = [row[:length] for row, length in zip(logprobs_out.tolist(), lengths)]
    return tokens_list, logprobs_list, finish


def generate(model, tokenizer, prompts: Sequence, *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, num_samples: int = 1, seed: int | None = 0, batch_size: int = 16,
             stop: Sequence[str] | None = None, progress: bool | None = None,
             threads: int | str | None = None, fast_decoder: bool = True) -> list[Generation]:
    """Sample responses for ``prompts`` (strings or message lists).

    Args:
        max_new_tokens: generation budget per response.
        temperature: 0 for greedy decoding, else sampling temperature.
        top_p: nucleus sampling threshold (1.0 = off).
        num_samples: responses per prompt (GRPO's k); results are grouped by prompt.
        seed: seeds a private torch.Generator, so results do not depend on global RNG state.
        batch_size: rows decoded together (prompts x samples).
        stop: strings that end a response early (finish_reason "stop"); the text is cut before them.
        progress: show a tqdm bar (default: when there is more than one batch).
        threads: intra-op threads while decoding: None keeps torch's setting, an int sets it, "auto"
            picks the fastest count up to torch's setting with a quick matmul of the decode's shape
            (:func:`fastest_threads`; on a busy machine one thread can be several times faster).
        fast_decoder: decode float32 Llama-family models with :mod:`tulu_lab.llama_decode` (fused
            weights with the adapters merged, a static KV cache); False, or any other model, runs the
            model's own forward. Both compute the same function up to float32 rounding.

    Returns:
        ``len(prompts) * num_samples`` Generations, prompt-major, in input order.
    """
    from tqdm.auto import tqdm

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; load it with tulu_lab.models.load_tokenizer")
    check_threads(threads, "generate")
    texts = [format_prompt(p, tokenizer) for p in prompts]
    eos_ids = eos_token_ids(model, tokenizer)
    generator = None if seed is None else torch.Generator(device=next(model.parameters()).device).manual_seed(seed)

    # Longest first: similar lengths share a batch, and the slowest batch shows up in the bar early.
    token_lists = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # tokenised once
    order = sorted(range(len(texts)), key=lambda i: -len(token_lists[i]))
    prompts_per_batch = max(1, batch_size // num_samples)
    batches = [order[i:i + prompts_per_batch] for i in range(0, len(order), prompts_per_batch)]
    show = progress if progress is not None else len(batches) > 1
    results: list[Generation | None] = [None] * (len(texts) * num_samples)
    if threads == "auto":
        config = getattr(model, "config", None)
        hidden = getattr(config, "hidden_size", 1024)
        threads = fastest_threads(min(batch_size, len(texts) * num_samples), hidden,
                                  getattr(config, "intermediate_size", 4 * hidden))
    was_training = model.training
    model.eval()
    try:
        decoder = _decoder(model) if fast_decoder else None
        steps = _DecoderSteps(decoder, pack=max_new_tokens >= PACK_MIN_NEW_TOKENS) if decoder is not None else None
        with (contextlib.nullcontext() if decoder is not None else _fast_adapters(model)), num_threads(threads):
            for batch in tqdm(batches, desc="generating", disable=not show, unit="batch"):
                toks, lps, finish = _generate_batch(
                    model, tokenizer, [token_lists[i] for i in batch], repeats=num_samples,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    generator=generator, eos_ids=eos_ids, stop=stop, steps=steps)
                for j, prompt_index in enumerate(batch):
                    for s in range(num_samples):
                        row = j * num_samples + s
                        results[prompt_index * num_samples + s] = _make_generation(
                            tokenizer, texts[prompt_index], prompt_index, toks[row], lps[row], finish[row],
                            eos_ids, stop)
    finally:
        model.train(was_training)
    return results


def _make_generation(tokenizer, prompt, prompt_index, token_ids, logprobs, finish, eos_ids, stop):
    body = token_ids[:-1] if finish == "eos" else token_ids
    text = tokenizer.decode(body, skip_special_tokens=False)
    if finish == "stop" and stop:
        cut = min((text.find(s) for s in stop if s in text), default=len(text))
        text = text[:cut]
    return Generation(prompt=prompt, text=text, token_ids=token_ids, logprobs=logprobs,
                      stopped=finish == "eos", finish_reason=finish, prompt_index=prompt_index)
