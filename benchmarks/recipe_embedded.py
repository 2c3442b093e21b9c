"""The embedded recipe, measured: SFT -> DPO -> RLVR on SmolLM2-135M-Instruct with LoRA on 2 CPU cores.

    python benchmarks/recipe_embedded.py            # the three stages and their held-out figures (about 40 min)
    python benchmarks/recipe_embedded.py --sweep    # then the 3 x 2 beta x seed ablation (resumable)
    python benchmarks/recipe_embedded.py --rlvr-minutes 20 --rlvr-steps 32   # RLVR with the 20-minute budget

The recipe (``recipes/embedded``) gives the RLVR stage a 10-minute budget (``make reproduce`` fits in 45
minutes); ``--rlvr-minutes`` and ``--rlvr-steps`` change it for this call: an RLVR run of its own beside
the 10-minute one (SFT and DPO are shared).

It runs ``tulu_lab.pipeline`` (the code the notebooks run), so its checkpoints are the ones
``make reproduce`` picks up in ``runs/recipe/``; a finished stage is read back, an interrupted one
resumes from its last checkpoint. Held-out: 400 synthetic word problems at the generator's default
difficulty that no stage trains on, greedy decoding, 96 new tokens, the gsm8k verifier.

Targets printed with each figure:
- SFT: >= 95% of responses end in the "#### N" format, and accuracy above the instruct model;
- DPO: held-out preference accuracy (implicit reward margin > 0 on 200 pairs of unseen problems) >= 80%;
- RLVR from the DPO model: >= +10 points of held-out accuracy within 20 minutes, McNemar p < 0.01.
Everything is also written to ``runs/recipe/report.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="also run the beta x seed ablation")
    parser.add_argument("--rlvr-minutes", type=float, help="RLVR wall-time budget (the recipe's: 10)")
    parser.add_argument("--rlvr-steps", type=int, help="RLVR steps the schedule spans (the recipe's: 16)")
    args = parser.parse_args()

    from tulu_lab import pipeline

    started = time.perf_counter()
    recipe = pipeline.load_recipe()
    if args.rlvr_minutes is not None:
        recipe = recipe.replace(rlvr_minutes=args.rlvr_minutes)
    if args.rlvr_steps is not None:
        recipe = recipe.with_stage("rlvr", max_steps=args.rlvr_steps)
    print(f"[recipe] {recipe}", flush=True)
    pipeline.run_rlvr(recipe)  # trains SFT and DPO first when they are missing
    instruct, sft, dpo, rlvr = (pipeline.heldout_results(stage, recipe) for stage in pipeline.STAGES)
    preference = pipeline.heldout_preference_accuracy("dpo", recipe)
    gain = pipeline.rlvr_gain("dpo", "rlvr", recipe)
    seconds = pipeline.stage_seconds(recipe)
    rlvr_steps = pipeline.read_metrics("rlvr", recipe)
    rlvr_training_s = float(rlvr_steps["step_time"].sum())  # rollouts + updates, without loading and saving

    report = {
        "recipe": recipe.to_dict(),
        "heldout": {r["stage"]: {"accuracy": r["accuracy"], "format_rate": r["format_rate"], "n": r["n"]}
                    for r in (instruct, sft, dpo, rlvr)},
        "dpo_heldout_preference_accuracy": preference, "rlvr_gain": gain, "stage_seconds": seconds,
        "rlvr_steps": len(rlvr_steps), "rlvr_training_seconds": rlvr_training_s, "targets": {
            "sft_format_95": sft["format_rate"] >= 0.95, "sft_beats_instruct": sft["accuracy"] > instruct["accuracy"],
            "dpo_preference_80": preference >= 0.80,
            "rlvr_plus_10_p01": gain["gain_points"] >= 10 and gain["mcnemar_p"] < 0.01,
            "rlvr_within_20_min": rlvr_training_s <= 20 * 60},
    }
    if args.sweep:
        from tulu_lab.sweep import summarise_sweep

        table = pipeline.run_ablation(recipe)
        summary = summarise_sweep(table, "eval/accuracy")
        report["sweep"] = json.loads(summary.to_json(orient="records"))
        print(summary.to_string(index=False))
    out = pipeline.recipe_runs_dir(recipe) / "report.json"
    out.write_text(json.dumps(report, indent=2, default=str))

    print(f"\n=== embedded recipe, held-out problems, greedy, {recipe.heldout_max_new_tokens} new tokens ===")
    for r in (instruct, sft, dpo, rlvr):
        print(f"  {r['stage']:8s} accuracy {r['accuracy']:6.1%}   answer format {r['format_rate']:6.1%}   "
              f"on {r['n']:3d} problems   trained in {seconds.get(r['stage'], 0) / 60:5.1f} min")
    t = report["targets"]
    print(f"SFT format >= 95%: {'met' if t['sft_format_95'] else 'NOT met'}; "
          f"SFT accuracy above instruct: {'met' if t['sft_beats_instruct'] else 'NOT met'}")
    print(f"DPO held-out preference accuracy {preference:.1%} (target 80%): "
          f"{'met' if t['dpo_preference_80'] else 'NOT met'}")
    print(f"RLVR {len(rlvr_steps)} steps in {rlvr_training_s / 60:.1f} min of training: "
          f"{gain['before']:.1%} -> {gain['after']:.1%} ({gain['gain_points']:+.1f} points; "
          f"{gain['only_after']} fixed, {gain['only_before']} broken; McNemar p = {gain['mcnemar_p']:.2g}); "
          f"target +10 at p < 0.01 within 20 min: "
          f"{'met' if t['rlvr_plus_10_p01'] and t['rlvr_within_20_min'] else 'NOT met'}")
    print(f"report: {out}; this call {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
