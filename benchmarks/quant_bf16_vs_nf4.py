"""bf16 vs NF4 (double quantisation) on the embedded model: memory, generation speed, fidelity, accuracy.

    .venv/bin/python benchmarks/quant_bf16_vs_nf4.py --problems 50               # the instruct model
    .venv/bin/python benchmarks/quant_bf16_vs_nf4.py --problems 100 --stage sft  # the recipe's SFT model

Prints, for each precision: bytes really held (parameters, buffers and bitsandbytes' quantisation
state), greedy generation tokens/s at batch 8, then the next-token KL divergence and top-1 agreement of
NF4 against bf16 on held-out text, and accuracy on synthetic GSM-style problems (greedy, zero-shot, in
the model's own chat format). Both models are timed alternately in one run. On CPUs without native
bf16, "bf16" also means emulated matmuls: the float32 row is printed for reference. The figures are
also written to ``runs/bench/quant_bf16_vs_nf4.json``, which notebook 07 shows.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from tulu_lab import paths
from tulu_lab.data import generate_word_problems
from tulu_lab.generate import generate
from tulu_lab.memory import measure_model_bytes
from tulu_lab.models import bf16_is_fast, load_model
from tulu_lab.quant_quality import compare_quantized
from tulu_lab.rewards import verify

HELD_OUT_TEXT = [
    "The mitochondria is the part of the cell that produces most of the chemical energy it needs.",
    "In 1969, Apollo 11 landed on the Moon, and Neil Armstrong became the first person to walk on its surface.",
    "To make bread, mix flour, water, salt and yeast, knead the dough, let it rise, and bake it until golden.",
    "A prime number has exactly two divisors: one and itself. The first primes are 2, 3, 5, 7 and 11.",
    "Photosynthesis turns carbon dioxide and water into glucose and oxygen using the energy of sunlight.",
    "The river flows north through the valley before it reaches the sea near the old fishing town.",
]


def tokens_per_second(model, tokenizer, prompts, max_new_tokens):
    start = time.perf_counter()
    out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts), progress=False)
    return sum(len(g.token_ids) for g in out) / (time.perf_counter() - start)


def accuracy(model, tokenizer, problems, max_new_tokens):
    prompts = [[{"role": "user", "content": p.prompt}] for p in problems]
    out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=16, progress=False)
    return sum(verify("gsm8k", g.text, str(p.answer)) for g, p in zip(out, problems)) / len(problems)


def load_variant(stage: str | None, **kwargs):
    """The embedded model, or a finished stage of the embedded recipe (Tülu template installed)."""
    if stage is None:
        return load_model("smollm2-135m", verbose=False, **kwargs)
    from tulu_lab import pipeline
    return pipeline.load_stage(stage, verbose=False, **kwargs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stage", choices=("sft", "dpo", "rlvr"), default=None,
                        help="quantise a trained stage of the embedded recipe (runs/recipe/) instead of the "
                             "instruct model, whose zero-shot accuracy is too low to compare")
    parser.add_argument("--output", type=Path, default=paths.runs_dir() / "bench" / "quant_bf16_vs_nf4.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = {
        "fp32": load_variant(args.stage, dtype="fp32"),
        "bf16": load_variant(args.stage, dtype="bf16"),
        "nf4+dq (bf16 compute)": load_variant(args.stage, quant="nf4", dtype="bf16"),
        "nf4+dq (fp32 compute)": load_variant(args.stage, quant="nf4", dtype="fp32"),
    }
    prompts = [[{"role": "user", "content": f"Tell me a short story about the number {i}."}] for i in range(8)]
    speed = {name: [] for name in variants}
    for _ in range(2):  # alternate, so load changes on a shared machine hit every variant alike
        for name, (model, tokenizer) in variants.items():
            speed[name].append(tokens_per_second(model, tokenizer, prompts, args.new_tokens))
    problems = generate_word_problems(args.problems, seed=12345)
    rows = []
    print(f"{'variant':24s} {'bytes held':>12s} {'tok/s (b=8)':>12s} {'GSM-synthetic acc':>18s}")
    for name, (model, tokenizer) in variants.items():
        acc = accuracy(model, tokenizer, problems, 96)
        rows.append({"variant": name, "bytes": measure_model_bytes(model), "tokens_per_s_batch8": max(speed[name]),
                     "accuracy": acc, "problems": args.problems})
        print(f"{name:24s} {rows[-1]['bytes'] / 1e6:10.1f}MB {max(speed[name]):12.1f} {acc:18.1%}")
    ref, tok = variants["bf16"]
    fidelity = {}
    for name in ("nf4+dq (bf16 compute)", "nf4+dq (fp32 compute)"):
        q = compare_quantized(ref, variants[name][0], tok, HELD_OUT_TEXT)
        fidelity[name] = q
        print(f"{name} vs bf16: next-token KL {q['kl_mean']:.3f} nats (max {q['kl_max']:.2f}), "
              f"top-1 agreement {q['top1_agreement']:.1%}, perplexity {q['ppl_reference']:.2f} -> {q['ppl_quantized']:.2f} "
              f"over {q['n_positions']} positions")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model": args.stage or "instruct", "bf16_native": bf16_is_fast("cpu"),
                                       "threads": args.threads, "variants": rows, "vs_bf16": fidelity}, indent=2))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
