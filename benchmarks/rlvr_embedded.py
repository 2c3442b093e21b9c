"""RLVR (GRPO, CPU preset) on the embedded SmolLM2-135M: held-out accuracy before vs after, McNemar test.

    python benchmarks/rlvr_embedded.py                       # 20 min of RLVR + 2 greedy evaluations of 400
    python benchmarks/rlvr_embedded.py --minutes 5 --n-test 100          # a quick look
    python benchmarks/rlvr_embedded.py --sweep               # beta x seed ablation (3 x 2), short runs, resumable

Start checkpoint, first found: ``--start``; runs/dpo-embedded/final; runs/bench-sft-dpo-embedded/dpo/final;
runs/sft-embedded/final; runs/bench-sft-dpo-embedded/sft/final; else a quick LoRA SFT trained here
(``--sft-steps``, ``SFTConfig.cpu_preset``) into OUT/sft.

Held-out problems: ``--n-test`` (400) synthetic word problems at the generator's DEFAULT difficulty,
disjoint (by problem key and by text) from every problem the start checkpoint was trained on (rebuilt
from the settings in the SFT/DPO benchmark's results.json next to it, or from this script's own SFT)
and from the RLVR training prompts. Greedy decoding, ``--max-new-tokens`` (96) new tokens, verified by
the gsm8k verifier (last number == answer).

Training: ``train_rlvr`` with ``RLVRConfig.cpu_preset()`` (GRPO, 2 prompts x 8 samples, beta 0.04,
k3 KL, LoRA r16 on all projections) for at most ``--minutes`` of wall time (``time_limit_s``) or the
preset's 40 steps. On a CPU without bf16 matrix units the run computes in float32 (the preset asks
for bf16 autocast). Reward / KL / length are printed for every step, then the accuracies, their Wilson
95% intervals and the exact McNemar p-value. Target: +10 points absolute at p < 0.01.

The machine may be shared: ``--threads`` sets torch's threads (1 is best on a busy 2-core machine).
Everything is written to ``--out`` (results.json, the RLVR run, cached evaluations); a killed run is
continued by running the same command again (RLVR resumes from its checkpoint, finished evaluations
are read back).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

START_CANDIDATES = ("runs/dpo-embedded/final", "runs/bench-sft-dpo-embedded/dpo/final",
                    "runs/sft-embedded/final", "runs/bench-sft-dpo-embedded/sft/final")


# ----------------------------------------------------------------------------------------------
# Start checkpoint and the problems it was trained on
# ----------------------------------------------------------------------------------------------


def trained_problems(start: Path) -> list | None:
    """The problems behind the start checkpoint, rebuilt from the SFT/DPO benchmark's settings
    (``results.json`` two folders up: OUT/{sft,dpo}/final), or None when they cannot be found."""
    from tulu_lab.data.synthetic import make_splits

    for results in (start.parent.parent / "results.json", start.parent / "results.json"):
        if results.is_file():
            settings = json.loads(results.read_text()).get("settings", {})
            if {"sft_examples", "dpo_pairs", "n_test", "seed"} <= set(settings):
                train, _ = make_splits(settings["sft_examples"] + settings["dpo_pairs"], settings["n_test"],
                                       seed=settings["seed"])
                return train
    return None


def quick_sft(out: Path, steps: int, precision: str, seed: int = 0) -> tuple[Path, list]:
    """A LoRA SFT of the instruct model on worked solutions (when no SFT/DPO checkpoint exists)."""
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.config import SFTConfig
    from tulu_lab.data.synthetic import generate_word_problems, sft_row
    from tulu_lab.models import load_model
    from tulu_lab.sft import train_sft

    cfg = SFTConfig.cpu_preset(output_dir=str(out / "sft"), max_steps=steps, precision=precision)
    problems = generate_word_problems(steps * cfg.effective_batch, seed=seed * 1_000_003 + 4242)
    final = out / "sft" / "final"
    if not (final / "config.json").is_file():
        model, tokenizer = load_model("smollm2-135m", dtype="fp32" if precision == "fp32" else "bf16", verbose=False)
        install_tulu_template(tokenizer)
        train_sft(cfg, model, tokenizer, [sft_row(p) for p in problems])
    return final, problems


def resolve_start(args, precision: str) -> tuple[Path, list | None]:
    if args.start:
        start = Path(args.start)
        if not (start / "config.json").is_file():
            raise SystemExit(f"--start {start}: not a model folder (no config.json)")
        return start, trained_problems(start)
    for candidate in START_CANDIDATES:
        if (Path(candidate) / "config.json").is_file():
            return Path(candidate), trained_problems(Path(candidate))
    print(f"[bench] no SFT/DPO checkpoint found ({', '.join(START_CANDIDATES)}): training a quick SFT "
          f"({args.sft_steps} steps) into {Path(args.out) / 'sft'}", flush=True)
    return quick_sft(Path(args.out), args.sft_steps, precision)


def load(start: Path, precision: str):
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.models import load_model

    model, tokenizer = load_model(start, dtype="fp32" if precision == "fp32" else "bf16", verbose=False)
    install_tulu_template(tokenizer)  # the format SFT and DPO trained on
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# Evaluation (cached: a rerun after a kill reads finished evaluations back)
# ----------------------------------------------------------------------------------------------


def cached_accuracy(path: Path, model, tokenizer, rows, args, label: str, key: dict) -> list[bool]:
    from tulu_lab.rlvr import evaluate_accuracy

    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"[bench] {label}: read back from {path}", flush=True)
            return saved["correct"]
    started = time.perf_counter()
    accuracy, correct = evaluate_accuracy(model, tokenizer, rows, max_new_tokens=args.max_new_tokens,
                                          batch_size=args.batch_size, progress=True)
    seconds = time.perf_counter() - started
    path.write_text(json.dumps({"key": key, "accuracy": accuracy, "correct": correct, "seconds": seconds}))
    print(f"[bench] {label}: accuracy {accuracy:.1%} on {len(rows)} problems ({seconds:.0f} s)", flush=True)
    return correct


def print_steps(metrics: list[dict]) -> None:
    print(f"{'step':>4} {'reward':>7} {'acc':>6} {'kl':>8} {'length':>7} {'no-EOS':>7} {'zero-std':>8} "
          f"{'seconds':>8}")
    for m in metrics:
        kl = f"{m['kl']:.4f}" if m.get("kl") is not None else "-"
        zero = m.get("frac_reward_zero_std")
        print(f"{m['step']:>4} {m['reward']:>7.2f} {m['accuracy']:>6.1%} {kl:>8} "
              f"{m['completions/mean_length']:>7.1f} {m['completions/clipped_ratio']:>7.1%} "
              f"{zero if zero is None else format(zero, '.2f'):>8} {m['step_time']:>8.1f}")


# ----------------------------------------------------------------------------------------------
# Main measurement and the sweep
# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", default=None, help="model folder to start from (default: see above)")
    parser.add_argument("--out", default="runs/bench-rlvr-embedded", help="output folder")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-time budget of the RLVR training")
    parser.add_argument("--max-steps", type=int, default=None, help="override the preset's 40 steps")
    parser.add_argument("--n-test", type=int, default=400, help="held-out problems")
    parser.add_argument("--n-train", type=int, default=2000, help="RLVR training prompts")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--rl-seed", type=int, default=1, help="RLVR seed (the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's learning rate (2e-5)")
    parser.add_argument("--beta", type=float, default=None, help="override the preset's beta (0.04)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="evaluation and rollout budget")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation generation batch")
    parser.add_argument("--sft-steps", type=int, default=40, help="quick SFT steps when no checkpoint exists")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--sweep", action="store_true", help="run the beta x seed ablation instead")
    parser.add_argument("--betas", default="0,0.04,0.1", help="sweep: beta values")
    parser.add_argument("--seeds", default="1,2", help="sweep: RLVR seeds")
    parser.add_argument("--sweep-steps", type=int, default=3, help="sweep: RLVR steps per cell")
    parser.add_argument("--sweep-eval", type=int, default=64, help="sweep: held-out problems per cell")
    args = parser.parse_args()

    import torch

    from tulu_lab.config import RLVRConfig
    from tulu_lab.data.synthetic import generate_word_problems, rlvr_row
    from tulu_lab.rlvr import bf16_matmul_is_slow

    if args.threads:
        torch.set_num_threads(args.threads)
    precision = "fp32" if bf16_matmul_is_slow() else "bf16-autocast"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, seen = resolve_start(args, precision)
    if seen is None:
        print(f"[bench] WARNING: cannot rebuild the problems {start} was trained on; the held-out set is "
              f"only disjoint from the RLVR prompts", flush=True)
    test = generate_word_problems(args.n_test, seed=args.seed, exclude=seen or ())
    train = generate_word_problems(args.n_train, seed=args.seed * 1_000_003 + 31337, exclude=test)
    test_rows, train_rows = [rlvr_row(p) for p in test], [rlvr_row(p) for p in train]
    seen_keys = {p.key for p in seen or ()} | {p.key for p in train}
    assert not any(p.key in seen_keys for p in test), "a held-out problem was trained on"
    overrides = {"precision": precision, "seed": args.rl_seed, "max_new_tokens": args.max_new_tokens, "eval_every": 0,
                 **({"learning_rate": args.lr} if args.lr else {}), **({"beta": args.beta} if args.beta is not None else {})}
    print(f"[bench] start {start}; {len(test_rows)} held-out problems, {len(train_rows)} RLVR prompts; "
          f"precision {precision}; torch threads {torch.get_num_threads()}", flush=True)
    if args.sweep:
        return sweep(args, start, precision, train_rows, test_rows, overrides, out)

    # ---- 1. before ----
    model, tokenizer = load(start, precision)
    key = {"start": str(start.resolve()), "n_test": len(test_rows), "seed": args.seed,
           "max_new_tokens": args.max_new_tokens}
    before = cached_accuracy(out / "eval_before.json", model, tokenizer, test_rows, args, "before RLVR", key)

    # ---- 2. RLVR ----
    from tulu_lab.rlvr import train_rlvr

    cfg = RLVRConfig.cpu_preset(output_dir=str(out / "rlvr"), **overrides,
                                **({"max_steps": args.max_steps} if args.max_steps else {}))
    started = time.perf_counter()
    result = train_rlvr(cfg, model, tokenizer, train_rows, time_limit_s=args.minutes * 60, save_merged=False)
    train_seconds = time.perf_counter() - started
    print(f"\n[bench] RLVR: {result['steps']} steps ({result['episodes']} episodes) in {train_seconds:.0f} s this "
          f"call; {sum(m['step_time'] for m in result['metrics']):.0f} s of steps in all", flush=True)
    print_steps(result["metrics"])

    # ---- 3. after ----
    after_key = {**key, "rlvr_steps": result["steps"], "rlvr_dir": str(Path(cfg.output_dir).resolve())}
    after = cached_accuracy(out / "eval_after.json", result["model"], tokenizer, test_rows, args, "after RLVR",
                            after_key)
    report(out, args, cfg, start, before, after, result, train_seconds)


def report(out, args, cfg, start, before, after, result, train_seconds) -> None:
    from tulu_lab.stats import discordant_counts, mcnemar, wilson_interval

    n = len(before)
    b, c = discordant_counts(before, after)
    p_value = mcnemar(before, after)
    acc_before, acc_after = sum(before) / n, sum(after) / n
    gain = acc_after - acc_before
    ci_before, ci_after = wilson_interval(sum(before), n), wilson_interval(sum(after), n)
    results = {
        "start": str(start), "n_test": n, "accuracy_before": acc_before, "accuracy_after": acc_after,
        "gain_points": 100 * gain, "wilson95_before": ci_before, "wilson95_after": ci_after,
        "right_to_wrong": b, "wrong_to_right": c, "mcnemar_p": p_value,
        "rlvr_steps": result["steps"], "rlvr_episodes": result["episodes"], "rlvr_seconds_this_call": train_seconds,
        "rlvr_step_seconds_total": sum(m["step_time"] for m in result["metrics"]),
        "target_met": gain >= 0.10 and p_value < 0.01, "config": cfg.to_dict(), "metrics": result["metrics"],
        "args": vars(args),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\n=== RLVR on the embedded model: {n} held-out problems, greedy ===")
    print(f"  before  {acc_before:6.1%}  (95% CI {ci_before[0]:.1%}-{ci_before[1]:.1%})")
    print(f"  after   {acc_after:6.1%}  (95% CI {ci_after[0]:.1%}-{ci_after[1]:.1%})  after {result['steps']} steps")
    print(f"  gain    {100 * gain:+.1f} points; right->wrong {b}, wrong->right {c}; McNemar exact p = {p_value:.3g}")
    print(f"  target (+10 points at p < 0.01): {'met' if results['target_met'] else 'NOT met'}")
    print(f"  written to {out / 'results.json'}")


def sweep(args, start, precision, train_rows, test_rows, overrides, out) -> None:
    from tulu_lab.config import RLVRConfig
    from tulu_lab.sweep import run_sweep, summarise_sweep

    eval_rows = test_rows[:args.sweep_eval]
    base = RLVRConfig.cpu_preset(**{**overrides, "max_steps": args.sweep_steps, "checkpoint_every": 1,
                                    "eval_every": args.sweep_steps})
    betas = [float(b) for b in args.betas.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    # the start model on the same problems, once: the row every cell is compared with
    model, tokenizer = load(start, precision)
    key = {"start": str(start.resolve()), "n_test": len(eval_rows), "seed": args.seed,
           "max_new_tokens": args.max_new_tokens}
    baseline = cached_accuracy(out / "sweep_eval_start.json", model, tokenizer, eval_rows, args, "start model", key)
    del model
    table = run_sweep(base, {"beta": betas}, seeds, data=train_rows, eval_data=eval_rows,
                      model_loader=lambda source: load(Path(source), precision), model=str(start),
                      output_dir=out / "sweep")
    final = table[table["final"]]
    print(f"\n=== beta x seed ablation: {args.sweep_steps} RLVR steps per cell, {len(eval_rows)} held-out problems ===")
    print(f"start model accuracy: {sum(baseline) / len(baseline):.1%}")
    print(final[["beta", "seed", "reward", "kl", "completions/mean_length", "eval/accuracy"]].to_string(index=False))
    print(summarise_sweep(table, "eval/accuracy").to_string(index=False))
    print(f"tidy table: {out / 'sweep' / 'results.csv'} ({len(table)} rows)")


if __name__ == "__main__":
    main()
