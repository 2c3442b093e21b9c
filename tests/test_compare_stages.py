"""The per-stage IFEval table: stratified subsets and paired McNemar tests on hand-made verdicts."""

import json
from collections import Counter

import pandas as pd
import pytest

from tulu_lab.compare_stages import IFEVAL_STAGE_COLUMNS, ifeval_stage_table, stratified_subset
from tulu_lab.data import load_ifeval
from tulu_lab.stats import mcnemar


def test_stratified_subset_keeps_group_shares_and_is_deterministic():
    rows = load_ifeval()
    subset = stratified_subset(rows, 200)
    assert len(subset) == 200 and len({r["key"] for r in subset}) == 200
    assert subset == stratified_subset(rows, 200) and subset != stratified_subset(rows, 200, seed=1)
    position = {r["key"]: i for i, r in enumerate(rows)}
    assert [position[r["key"]] for r in subset] == sorted(position[r["key"]] for r in subset)  # file order
    group = lambda r: r["instruction_id_list"][0].split(":")[0]  # noqa: E731
    full, part = Counter(map(group, rows)), Counter(map(group, subset))
    assert set(part) == set(full)
    for name, count in full.items():
        assert abs(part[name] - 200 * count / len(rows)) <= 1.5, name
    with pytest.raises(ValueError, match="n must be"):
        stratified_subset(rows, 0)


def _frame(tmp_path, stage, verdicts):
    path = tmp_path / f"{stage}.jsonl"
    with path.open("w") as handle:
        for index, (prompt_strict, prompt_loose, inst_strict, inst_loose) in enumerate(verdicts):
            handle.write(json.dumps({"id": str(index), "prompt_level_strict": prompt_strict,
                                     "prompt_level_loose": prompt_loose, "inst_level_strict": inst_strict,
                                     "inst_level_loose": inst_loose}) + "\n")
    frame = pd.DataFrame()
    frame.attrs["paths"] = {"jsonl": str(path)}
    return frame


def test_stage_table_pairs_prompts(tmp_path):
    instruct = [(False, False, [False, True], [False, True])] * 6 + [(True, True, [True], [True])] * 2
    sft = [(True, True, [True, True], [True, True])] * 6 + [(False, True, [False], [True])] * 2
    dpo = [(True, True, [True, True], [True, True])] * 5 + [(False, False, [False, False], [False, False])] + \
          [(False, True, [False], [True])] * 2
    table = ifeval_stage_table({s: _frame(tmp_path, s, v) for s, v in
                                (("instruct", instruct), ("sft", sft), ("dpo", dpo))})
    assert list(table.columns) == IFEVAL_STAGE_COLUMNS
    assert table.stage.tolist() == ["instruct", "sft", "dpo"] and table.n.tolist() == [8, 8, 8]
    assert table.prompt_loose.tolist() == [2 / 8, 1.0, 7 / 8]
    assert table.prompt_strict.tolist() == [2 / 8, 6 / 8, 5 / 8]
    assert table.inst_loose[0] == pytest.approx(8 / 14) and table.inst_strict[1] == pytest.approx(12 / 14)
    loose = {s: [v[1] for v in verdicts] for s, verdicts in (("instruct", instruct), ("sft", sft), ("dpo", dpo))}
    assert pd.isna(table.mcnemar_p_vs_instruct[0]) and pd.isna(table.mcnemar_p_vs_previous[0])
    assert table.mcnemar_p_vs_instruct[2] == pytest.approx(mcnemar(loose["instruct"], loose["dpo"]))
    assert table.mcnemar_p_vs_previous[2] == pytest.approx(mcnemar(loose["sft"], loose["dpo"]))
    assert table.mcnemar_p_vs_instruct[1] == pytest.approx(2 * 0.5 ** 6)  # 6 fixed, 0 broken


def test_stage_table_refuses_different_prompts(tmp_path):
    a = _frame(tmp_path, "instruct", [(True, True, [True], [True])] * 2)
    b = _frame(tmp_path, "sft", [(True, True, [True], [True])] * 3)
    with pytest.raises(ValueError, match="same prompts"):
        ifeval_stage_table({"instruct": a, "sft": b})
