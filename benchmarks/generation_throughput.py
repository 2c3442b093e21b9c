"""Generation-only throughput: tulu_lab.generate.generate against transformers' model.generate.

    python benchmarks/generation_throughput.py                     # batch 1, 8, 32; 64 new tokens
    python benchmarks/generation_throughput.py --batches 1,8,32 --new-tokens 64 --threads 2 --lora

The embedded SmolLM2-135M-Instruct (bf16 where the CPU has bf16 matrix instructions, else float32, as
``load_model`` picks) answers synthetic GSM-style word problems in the Tülu chat template, greedily, at
each batch size, on the same threads: the same prompts for both samplers,
each run twice in alternation (ours, HF, ours, HF) and the faster run kept. Throughput counts the
tokens each response really has (up to and including EOS), divided by wall time; rows that finish
early stop costing time in our sampler, while HF keeps them in the batch until the last one ends.

--lora attaches fresh rank-16 adapters (all linear projections, B set to small random values so
they change the output), as during RLVR rollouts. --sampled adds the RLVR shape: 2 prompts x 8
samples at temperature 1 and 96 new tokens, against model.generate(num_return_sequences=8).

The last lines give the verifier's speed: tulu_lab.rewards.verify("gsm8k", ...) calls per second
on the responses just generated.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def load(lora: bool):
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.config import LoraSettings
    from tulu_lab.models import attach_lora, load_model, lora_config

    model, tokenizer = load_model("smollm2-135m")
    install_tulu_template(tokenizer)
    if lora:
        settings = LoraSettings()
        model = attach_lora(model, lora_config(r=settings.r, alpha=settings.alpha, dropout=settings.dropout,
                                               target_modules=list(settings.target_modules)))
        generator = torch.Generator().manual_seed(0)
        for name, param in model.named_parameters():
            if param.requires_grad:  # adapters train in fp32, as in the RLVR loop
                param.data = param.data.float()
            if "lora_B" in name:  # fresh B is zero: make the adapters matter
                param.data = torch.randn(param.shape, generator=generator) * 1e-3
    model.eval()
    return model, tokenizer


def prompts(n: int) -> list[list[dict]]:
    from tulu_lab.data import generate_word_problems, rlvr_row

    return [rlvr_row(p)["messages"] for p in generate_word_problems(n, seed=0)]


def response_lengths(sequences: torch.Tensor, prompt_width: int, eos_ids: list[int]) -> list[int]:
    """Real tokens of each row of ``model.generate``'s output: up to and including the first EOS."""
    new = sequences[:, prompt_width:]
    is_eos = torch.isin(new, torch.tensor(eos_ids))
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full((len(new),), new.size(1)))
    return first.tolist()


def compute_autocast():
    """bf16 autocast where bf16 is native, else nothing (the weights are float32 there)."""
    from tulu_lab.models import bf16_is_fast

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_is_fast("cpu"))


def hf_generate(model, tokenizer, messages, *, new_tokens: int, temperature: float, samples: int) -> tuple[float, int]:
    from tulu_lab.generate import eos_token_ids, format_prompt

    texts = [format_prompt(m, tokenizer) for m in messages]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    kwargs = dict(do_sample=False) if temperature == 0 else dict(do_sample=True, temperature=temperature, top_k=0,
                                                                   top_p=1.0, num_return_sequences=samples)
    started = time.perf_counter()
    with torch.inference_mode(), compute_autocast():
        out = model.generate(**enc, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs)
    seconds = time.perf_counter() - started
    return seconds, sum(response_lengths(out, enc["input_ids"].size(1), eos_token_ids(model, tokenizer)))


def ours_generate(model, tokenizer, messages, *, new_tokens: int, temperature: float, samples: int, threads=None):
    from tulu_lab.generate import generate

    started = time.perf_counter()
    with compute_autocast():
        gens = generate(model, tokenizer, messages, max_new_tokens=new_tokens, temperature=temperature,
                        num_samples=samples, batch_size=len(messages) * samples, seed=0, progress=False,
                        threads=threads)
    seconds = time.perf_counter() - started
    return seconds, sum(len(g.token_ids) for g in gens), gens


def compare(model, tokenizer, messages, *, new_tokens: int, temperature: float, samples: int, label: str,
            threads=None):
    """Best of two alternated runs per side; prints one line and returns our generations."""
    best = {"ours": (float("inf"), 0), "hf": (float("inf"), 0)}
    gens = []
    for _ in range(2):
        s, n, gens = ours_generate(model, tokenizer, messages, new_tokens=new_tokens, temperature=temperature,
                                   samples=samples, threads=threads)
        best["ours"] = min(best["ours"], (s, n))
        s, n = hf_generate(model, tokenizer, messages, new_tokens=new_tokens, temperature=temperature,
                           samples=samples)
        best["hf"] = min(best["hf"], (s, n))
    ours = best["ours"][1] / best["ours"][0]
    hf = best["hf"][1] / best["hf"][0]
    print(f"{label}: ours {ours:7.1f} tok/s ({best['ours'][1]} tokens in {best['ours'][0]:.2f} s)   "
          f"HF generate {hf:7.1f} tok/s ({best['hf'][1]} tokens in {best['hf'][0]:.2f} s)   ours/HF {ours / hf:.2f}x",
          flush=True)
    return gens


def verifier_rate(texts: list[str], truths: list[str], seconds: float) -> tuple[float, float]:
    """verify("gsm8k") calls per wall second and per CPU second, cycling through the responses."""
    from tulu_lab.rewards import verify

    calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while True:
        for text, truth in zip(texts, truths):
            verify("gsm8k", text, truth)
        calls += len(texts)
        if time.perf_counter() - started >= seconds:
            break
    return calls / (time.perf_counter() - started), calls / max(time.process_time() - cpu_started, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes (greedy)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora", action="store_true", help="attach rank-16 LoRA adapters (as in RLVR)")
    parser.add_argument("--sampled", action="store_true", help="also the RLVR shape: 2 prompts x 8 samples, T=1, 96 tokens")
    parser.add_argument("--ours-threads", default=None,
                        help="ours: 'auto' (the fastest count up to --threads, measured) or a count; default --threads")
    parser.add_argument("--verifier-seconds", type=float, default=2.0)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.ours_threads not in (None, "auto") and not (args.ours_threads.isdigit() and int(args.ours_threads) >= 1):
        parser.error(f"--ours-threads must be 'auto' or a positive integer, got {args.ours_threads!r}")
    threads = None if args.ours_threads is None else (args.ours_threads if args.ours_threads == "auto"
                                                      else int(args.ours_threads))
    if not batches or min(batches) < 1:
        parser.error(f"--batches must list positive integers, got {args.batches!r}")

    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.lora)
    print(f"SmolLM2-135M-Instruct, {model.dtype}, {torch.get_num_threads()} threads (ours: {threads or 'the same'}), "
          f"{args.new_tokens} new tokens, "
          f"greedy{', LoRA r16' if args.lora else ''}", flush=True)
    pool = prompts(max(batches + [2]))
    gens = []
    for batch in batches:
        gens = compare(model, tokenizer, pool[:batch], new_tokens=args.new_tokens, temperature=0.0, samples=1,
                       label=f"batch {batch:3d}", threads=threads)
    if args.sampled:
        gens = compare(model, tokenizer, pool[:2], new_tokens=96, temperature=1.0, samples=8,
                       label="2 prompts x 8 samples, T=1, 96 tokens", threads=threads)

    from tulu_lab.data import generate_word_problems, rlvr_row

    truths = [rlvr_row(p)["ground_truth"] for p in generate_word_problems(len(pool), seed=0)]
    texts = [g.text for g in gens]
    wall, cpu = verifier_rate(texts, [truths[g.prompt_index] for g in gens], args.verifier_seconds)
    print(f"verifier (gsm8k, on {len(texts)} generated responses): {wall:,.0f} calls/s wall clock, "
          f"{cpu:,.0f} per CPU second")


if __name__ == "__main__":
    main()
