"""A recipe as data: the model, the data split, and one training config per stage, read from YAML.

    recipe = load_recipe()                      # recipes/embedded (smoke.yaml on top when TULU_LAB_SMOKE=1)
    recipe = load_recipe("recipes/embedded", smoke=True)
    variant = recipe.with_stage("dpo", beta=2.0)

A recipe folder holds ``recipe.yaml`` (name, model, dtype, data sizes, held-out settings, the RLVR wall
time) naming one stage file per stage (``sft.yaml``, ``dpo.yaml``, ``rlvr.yaml``, each read by
``tulu_lab.config.load_config``), and optionally ``smoke.yaml``: an overlay whose top-level keys change
the recipe and whose ``sft`` / ``dpo`` / ``rlvr`` sections change those stages. A :class:`Recipe` is
immutable and passed explicitly to whatever runs it (``tulu_lab.pipeline``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tulu_lab import paths
from tulu_lab.config import EMBEDDED, DPOConfig, RLVRConfig, SFTConfig, _read_mapping, load_config

STAGES = ("sft", "dpo", "rlvr")
SMOKE_OVERLAY = "smoke.yaml"
DTYPES = ("fp32", "bf16")
QUANTS = (None, "nf4")  # the stages load their starting model so (nf4: QLoRA, lora.quantize_4bit)


@dataclass(frozen=True)
class Recipe:
    """Everything a run of the recipe depends on besides code."""

    name: str                    # runs go to runs/<name>/<stage>-<fingerprint>/
    model: str                   # the starting model: a name load_model knows, a folder or a hub id
    dtype: str                   # weights and compute dtype for every stage ("fp32" or "bf16")
    seed: int                    # the data split's seed
    n_train: int                 # training problems (a third each for SFT, DPO and RLVR)
    n_test: int                  # held-out problems
    n_test_instruct: int         # held-out problems the untrained model is scored on
    dpo_heldout_pairs: int       # held-out preference pairs
    heldout_max_new_tokens: int  # greedy held-out answers
    rlvr_minutes: float          # wall-time cap of the RLVR stage
    sft: SFTConfig
    dpo: DPOConfig
    rlvr: RLVRConfig
    source: str = ""             # the folder it was read from
    quant: str | None = None     # None, or "nf4": every stage loads its model in 4 bits and trains QLoRA

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"recipe {self.name!r}: dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        for name in ("n_train", "n_test", "n_test_instruct", "dpo_heldout_pairs", "heldout_max_new_tokens"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ValueError(f"recipe {self.name!r}: {name} must be an int > 0, got {getattr(self, name)!r}")
        if self.quant not in QUANTS:
            raise ValueError(f"recipe {self.name!r}: quant must be one of {list(QUANTS)}, got {self.quant!r}")
        if not self.rlvr_minutes > 0:
            raise ValueError(f"recipe {self.name!r}: rlvr_minutes must be > 0, got {self.rlvr_minutes!r}")

    def stage(self, stage: str):
        """The training config of ``stage`` ("sft" | "dpo" | "rlvr")."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; allowed: {list(STAGES)}")
        return getattr(self, stage)

    def with_stage(self, stage: str, **changes: Any) -> Recipe:
        """A copy with ``stage``'s config changed (validated), e.g. ``with_stage("dpo", beta=2.0)``."""
        cfg = self.stage(stage)
        try:
            changed = dataclasses.replace(cfg, **changes)
        except TypeError as err:
            raise TypeError(f"{type(cfg).__name__}: {err}") from None
        return dataclasses.replace(self, **{stage: changed})

    def replace(self, **changes: Any) -> Recipe:
        """A copy with recipe-level settings changed, e.g. ``replace(rlvr_minutes=20)``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in STAGES}
        return {**data, **{stage: self.stage(stage).to_dict() for stage in STAGES}}


def recipe_dir(name: str = EMBEDDED) -> Path:
    """``recipes/<name>`` of the project the working directory is in, else of the checkout this package
    was imported from (a notebook copied or run elsewhere still finds the recipe)."""
    here = paths.project_root() / "recipes" / name
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / "recipes" / name


def load_recipe(folder: str | Path | None = None, *, smoke: bool | None = None) -> Recipe:
    """Read ``recipe.yaml`` and its stage files from ``folder`` (default ``recipes/embedded``); with
    ``smoke`` (default: ``TULU_LAB_SMOKE``) the folder's ``smoke.yaml`` overlay is applied."""
    folder = Path(folder) if folder is not None else recipe_dir()
    if folder.is_file():
        folder = folder.parent
    main = folder / "recipe.yaml"
    if not main.is_file():
        raise FileNotFoundError(f"no recipe at {main}")
    data = _read_mapping(main)
    stage_files = data.pop("stages", None)
    if not isinstance(stage_files, dict) or set(stage_files) != set(STAGES):
        raise ValueError(f"{main}: 'stages' must name one file for each of {list(STAGES)}, got {stage_files!r}")
    configs = {stage: load_config(folder / stage_files[stage]) for stage in STAGES}
    smoke_on = paths.smoke() if smoke is None else smoke
    if smoke_on:
        overlay_path = folder / SMOKE_OVERLAY
        if not overlay_path.is_file():
            raise FileNotFoundError(f"smoke run asked for but {overlay_path} does not exist")
        overlay = _read_mapping(overlay_path)
        for stage in STAGES:
            changes = overlay.pop(stage, None) or {}
            try:
                configs[stage] = dataclasses.replace(configs[stage], **changes)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{overlay_path}: section {stage!r}: {err}") from None
        data.update(overlay)
    fields = {f.name for f in dataclasses.fields(Recipe)} - set(STAGES) - {"source"}
    optional = {f.name for f in dataclasses.fields(Recipe) if f.default is not dataclasses.MISSING}
    unknown = sorted(set(data) - fields)
    missing = sorted(fields - optional - set(data))
    if unknown or missing:
        raise ValueError(f"{main}: unknown keys {unknown}, missing keys {missing}; a recipe has {sorted(fields)}")
    return Recipe(**data, **configs, source=str(folder))


__all__ = ["QUANTS", "Recipe", "STAGES", "load_recipe", "recipe_dir"]
