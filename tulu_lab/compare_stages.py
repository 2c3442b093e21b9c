"""Stages of the recipe side by side on one benchmark: paired per-prompt verdicts and McNemar tests.

    frames = {stage: evaluate(model, tokenizer, "ifeval", data=rows, stage=stage) for stage ...}
    ifeval_stage_table(frames)   -> one row per stage: stage, n, prompt_strict, prompt_loose,
                                    inst_strict, inst_loose, mcnemar_p_vs_instruct, mcnemar_p_vs_previous

Values are fractions; the p-values are exact McNemar tests on prompt-level loose verdicts of the same
prompts (the first stage is the reference "instruct"; "previous" is the stage before in the order given).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from tulu_lab.stats import mcnemar

IFEVAL_STAGE_COLUMNS = ["stage", "n", "prompt_strict", "prompt_loose", "inst_strict", "inst_loose",
                        "mcnemar_p_vs_instruct", "mcnemar_p_vs_previous"]


def stratified_subset(rows: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """``n`` IFEval rows drawn in proportion to the group of their first instruction (``keywords``,
    ``length_constraints``, ...), at least one per group, in file order; the same for a given seed."""
    if not 0 < n <= len(rows):
        raise ValueError(f"n must be in 1..{len(rows)}, got {n}")
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[row["instruction_id_list"][0].split(":")[0]].append(index)
    if n < len(groups):
        raise ValueError(f"n={n} is smaller than the {len(groups)} instruction groups it must cover")
    rng = random.Random(seed)
    quotas = {name: max(1, round(n * len(members) / len(rows))) for name, members in groups.items()}
    while sum(quotas.values()) > n:  # rounding overshoot: trim the largest groups first
        largest = max(quotas, key=lambda name: (quotas[name], name))
        quotas[largest] -= 1
    while sum(quotas.values()) < n:
        room = [name for name in groups if quotas[name] < len(groups[name])]
        quotas[max(room, key=lambda name: (len(groups[name]) - quotas[name], name))] += 1
    chosen = sorted(i for name, members in sorted(groups.items()) for i in rng.sample(members, quotas[name]))
    return [rows[i] for i in chosen]


def _verdicts(frame: pd.DataFrame) -> list[dict]:
    path = Path(frame.attrs["paths"]["jsonl"])
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ifeval_stage_table(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The per-stage IFEval table (columns ``IFEVAL_STAGE_COLUMNS``) from ``evaluate`` results on the same prompts."""
    stages = list(frames)
    if not stages:
        raise ValueError("no stages given")
    records = {stage: _verdicts(frames[stage]) for stage in stages}
    ids = [r["id"] for r in records[stages[0]]]
    for stage in stages[1:]:
        if [r["id"] for r in records[stage]] != ids:
            raise ValueError(f"stage {stage!r} was evaluated on other prompts than {stages[0]!r}: "
                             f"the paired tests need the same prompts in the same order")
    loose = {stage: [bool(r["prompt_level_loose"]) for r in records[stage]] for stage in stages}
    rows = []
    for position, stage in enumerate(stages):
        stage_records = records[stage]
        instructions = {kind: [bool(v) for r in stage_records for v in r[f"inst_level_{kind}"]]
                        for kind in ("strict", "loose")}
        rows.append({
            "stage": stage, "n": len(stage_records),
            "prompt_strict": sum(bool(r["prompt_level_strict"]) for r in stage_records) / len(stage_records),
            "prompt_loose": sum(loose[stage]) / len(stage_records),
            "inst_strict": sum(instructions["strict"]) / len(instructions["strict"]),
            "inst_loose": sum(instructions["loose"]) / len(instructions["loose"]),
            "mcnemar_p_vs_instruct": None if position == 0 else mcnemar(loose[stages[0]], loose[stage]),
            "mcnemar_p_vs_previous": None if position == 0 else mcnemar(loose[stages[position - 1]], loose[stage]),
        })
    return pd.DataFrame(rows, columns=IFEVAL_STAGE_COLUMNS)
