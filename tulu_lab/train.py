"""Train one stage of a recipe from the shell; every changed option makes a run of its own.

    python -m tulu_lab.train recipes/embedded/rlvr.yaml --beta 0.05
    python -m tulu_lab.train recipes/embedded/dpo.yaml --beta 2.0 --learning_rate 1e-4
    python -m tulu_lab.train recipes/embedded/rlvr.yaml --start sft --recipe.rlvr_minutes 20
    TULU_LAB_SMOKE=1 python -m tulu_lab.train recipes/embedded/sft.yaml      # the smoke overlay
    python -m tulu_lab.train recipes/embedded/sft.yaml --help                # every option, with the recipe's value

The file is a stage file of a recipe folder (``recipe.yaml`` beside it). Every field of the stage's
config is an option (``--lora.r`` for the adapters) and so is every recipe setting (``--recipe.model``,
``--recipe.rlvr_minutes`` ...); their defaults are the recipe's values. The stage's upstream runs are
trained first when missing, as :mod:`tulu_lab.pipeline` does; the run's ``final`` folder is printed.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

from tulu_lab.config import LoraSettings, load_config
from tulu_lab.recipe import STAGES, Recipe, load_recipe

_NOT_OPTIONS = ("output_dir", "log_path", "lora")
_RECIPE_OPTIONS = ("model", "dtype", "seed", "n_train", "n_test", "n_test_instruct", "dpo_heldout_pairs",
                   "heldout_max_new_tokens", "rlvr_minutes", "quant")


def build_parser(recipe: Recipe, stage: str):
    """A jsonargparse parser whose options are the stage config's and the recipe's fields."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m tulu_lab.train", description=__doc__.split("\n")[0])
    parser.add_argument("file", type=str, help="a recipe's stage file, e.g. recipes/embedded/rlvr.yaml")
    parser.add_argument("--force", type=bool, default=False,
                        help="train a further repeat even when this run has finished (a run of its own)")
    if stage == "rlvr":
        parser.add_argument("--start", type=str, default="dpo", choices=["dpo", "sft"],
                            help="the recipe's run RLVR starts from")
    cfg = recipe.stage(stage)
    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        if field.name not in _NOT_OPTIONS:
            parser.add_argument(f"--{field.name}", type=hints[field.name], default=getattr(cfg, field.name))
    if cfg.lora is not None:
        lora_hints = typing.get_type_hints(LoraSettings)
        for field in dataclasses.fields(LoraSettings):
            parser.add_argument(f"--lora.{field.name}", type=lora_hints[field.name],
                                default=getattr(cfg.lora, field.name))
    recipe_hints = typing.get_type_hints(Recipe)
    for name in _RECIPE_OPTIONS:
        parser.add_argument(f"--recipe.{name}", type=recipe_hints[name], default=getattr(recipe, name))
    return parser


def main(argv: list[str] | None = None) -> Path:
    from tulu_lab import pipeline

    argv = list(sys.argv[1:] if argv is None else argv)
    files = [a for a in argv if not a.startswith("-") and a.endswith((".yaml", ".yml"))]
    if not files:
        raise SystemExit(f"usage: python -m tulu_lab.train RECIPE_DIR/<stage>.yaml [--field value ...]\n\n{__doc__}")
    path = Path(files[0])
    stage = load_config(path).stage
    if stage not in STAGES:
        raise SystemExit(f"{path}: stage {stage!r} is not one of {list(STAGES)}")
    recipe = load_recipe(path.parent)
    args = build_parser(recipe, stage).parse_args(argv).as_dict()

    recipe = recipe.replace(**args.pop("recipe"))
    cfg = recipe.stage(stage)
    lora = args.pop("lora", None)
    overrides = {name: value for name, value in args.items()
                 if name not in ("file", "force", "start", "config", "__path__") and value != getattr(cfg, name)}
    if lora is not None and LoraSettings(**lora) != cfg.lora:
        overrides["lora"] = LoraSettings(**lora)
    runner = {"sft": pipeline.run_sft, "dpo": pipeline.run_dpo, "rlvr": pipeline.run_rlvr}[stage]
    extra = {"start": args["start"]} if stage == "rlvr" else {}
    final = runner(recipe, force=args["force"], **extra, **overrides)
    record = pipeline.run_record(final.parent, recipe) or {}
    print(f"[tulu_lab.train] {stage} run {record.get('fingerprint')} ({record.get('status')}, step "
          f"{record.get('step')}): {final}", flush=True)
    return final


if __name__ == "__main__":
    main()
