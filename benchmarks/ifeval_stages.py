"""IFEval for each stage of the embedded recipe, paired: figures/ifeval_stages.csv.

Every stage answers the same IFEval prompts (all 541 by default, zero-shot, greedy) and the table gives
prompt- and instruction-level accuracy, strict and loose, with exact McNemar p-values on prompt-level
loose against the instruct model and against the stage before:

    python benchmarks/ifeval_stages.py                              # instruct, sft, dpo, rlvr on all 541
    python benchmarks/ifeval_stages.py --stages instruct --subset 200   # a stratified 200-prompt subset

"instruct" is SmolLM2-135M-Instruct as shipped, with its own chat template (as its model card measured:
IFEval 29.9, the average of prompt- and instruction-level loose); the trained stages use the Tülu template
they were trained with (``--instruct-template tulu`` puts the instruct model on it too). Stages come from
``runs/`` (``make reproduce`` or the pipeline trains them); a missing stage is reported and skipped.
Generations and verdicts are cached per stage in ``--output-dir``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CARD_IFEVAL = 29.9  # SmolLM2-135M-Instruct model card: IFEval, average of prompt- and instruction-level


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="instruct,sft,dpo,rlvr", help="comma-separated, in recipe order")
    parser.add_argument("--subset", type=int, default=None,
                        help="a stratified subset of this many prompts (default: all 541)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="generation budget (OLMES: 2048)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--instruct-template", choices=("native", "tulu"), default="native")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "runs" / "ifeval_stages")
    parser.add_argument("--csv", type=Path, default=REPO_ROOT / "figures" / "ifeval_stages.csv")
    return parser.parse_args(argv)


def load(stage: str, template: str):
    import torch

    from tulu_lab import pipeline
    from tulu_lab.models import load_model

    if stage == "instruct" and template == "native":
        return load_model("smollm2-135m", dtype=torch.float32)
    return pipeline.load_stage(stage, dtype=torch.float32)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tulu_lab.compare_stages import ifeval_stage_table, stratified_subset
    from tulu_lab.data import load_ifeval
    from tulu_lab.evaluate import evaluate

    rows = load_ifeval()
    if args.subset:
        rows = stratified_subset(rows, args.subset)
    frames, seconds = {}, {}
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        try:
            model, tokenizer = load(stage, args.instruct_template)
        except FileNotFoundError as err:
            print(f"{stage}: skipped ({err})")
            continue
        started = time.perf_counter()
        frames[stage] = evaluate(model, tokenizer, "ifeval", data=rows, max_new_tokens=args.max_new_tokens,
                                 batch_size=args.batch_size, stage=stage, model_name=f"smollm2-135m-{stage}",
                                 output_dir=args.output_dir)
        seconds[stage] = frames[stage].attrs.get("seconds") or time.perf_counter() - started
        del model
    if not frames:
        print("no stage could be evaluated")
        return 1
    table = ifeval_stage_table(frames)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    print(f"IFEval, {len(rows)} prompts, zero-shot, greedy, <= {args.max_new_tokens} new tokens, float32")
    for row in table.itertuples():
        average = 50 * (row.prompt_loose + row.inst_loose)
        tests = "" if row.Index == 0 else (f"   p vs {table.stage[0]} {row.mcnemar_p_vs_instruct:.2g}, "
                                           f"vs previous {row.mcnemar_p_vs_previous:.2g}")
        print(f"{row.stage:<9} prompt strict {100 * row.prompt_strict:5.1f}  loose {100 * row.prompt_loose:5.1f}   "
              f"inst strict {100 * row.inst_strict:5.1f}  loose {100 * row.inst_loose:5.1f}   "
              f"avg loose {average:5.1f}   generated in {seconds[row.stage] / 60:.1f} min{tests}")
    if "instruct" in frames and args.instruct_template == "native":
        print(f"model card (instruct, average of prompt- and instruction-level): {MODEL_CARD_IFEVAL}")
    print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
