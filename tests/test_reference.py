"""The packaged paper tables load, carry their citations and flags, and hold the printed numbers."""

import json
import os
import re
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from tulu_lab import reference
from tulu_lab.reference import (
    FLAGS,
    available_tables,
    average_mismatches,
    long_table,
    paper_figures,
    paper_table,
    table4_long,
    tulu3_stage_scores,
)

# The transcription the package was copied from; compared byte for byte when this machine has it.
SHARED_REFERENCE = Path(os.environ.get("TULU_LAB_SHARED_REFERENCE", "/work/shared/reference"))
PACKAGE_DIR = resources.files("tulu_lab.reference")

RESULTS_WITH_AVERAGES = [
    "main_405b", "main_8b_v5", "main_70b_v5", "main_8b_v1_modelcard", "main_70b_v1_modelcard",
    "table23_rlvr_vs_dpo", "table31_dev_vs_unseen", "table33_unseen",
]


def cell(name: str, row: str, column: str, row_column: str = "benchmark") -> float:
    df = paper_table(name)
    return df.loc[df[row_column] == row, column].item()


@pytest.mark.parametrize("name", available_tables())
def test_every_table_loads_with_citation_and_flags(name):
    df = paper_table(name)
    assert len(df) > 0
    assert df.attrs["table"] == name
    assert "arXiv:2411.15124v5" in df.attrs["source"] or "allenai/Llama-3.1-Tulu-3-405B" in df.attrs["source"]
    assert isinstance(df.attrs["flags"], list)
    for flag in df.attrs["flags"]:
        assert re.match(r"^\d+\. ", flag)


def test_unknown_table_names_the_available_ones():
    with pytest.raises(KeyError) as error:
        paper_table("main_406b")
    assert "main_405b" in str(error.value) and "hparams" in str(error.value)


def test_listing_covers_every_packaged_file():
    files = {entry.name for entry in PACKAGE_DIR.iterdir() if entry.name.endswith((".csv", ".json"))}
    listed = {reference._TABLES[name].file for name in available_tables()}
    assert files == listed


@pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="transcription folder not on this machine")
@pytest.mark.parametrize("name", available_tables())
def test_packaged_file_is_the_transcription(name):
    file = reference._TABLES[name].file
    assert PACKAGE_DIR.joinpath(file).read_bytes() == (SHARED_REFERENCE / file).read_bytes()


def test_spot_values_as_printed():
    assert cell("main_405b", "GSM8K", "Tulu-3-405B") == 95.5
    assert cell("main_405b", "PopQA", "Tulu-3-405B") == 55.5
    assert cell("main_405b", "MATH", "Tulu-3-405B-DPO") == 59.9
    assert cell("main_405b", "Avg_w_safety", "DeepSeek-V3") == 75.9  # flagged, kept as printed
    assert cell("main_8b_v5", "GSM8K", "Tulu-3-8B") == 87.6
    assert cell("main_8b_v5", "BigBenchHard", "Llama-3.1-8B-Instruct") == 71.9
    assert cell("main_8b_v1_modelcard", "BigBenchHard", "Llama-3.1-8B-Instruct") == 62.8  # v1 differs
    assert cell("main_70b_v5", "MATH", "Tulu-3-70B") == 63.0
    assert cell("table33_unseen", "Avg", "Llama-3.1-8B-Instruct") == 36.4
    assert cell("table18_dpo_algos", "SFT base", "avg", row_column="algorithm") == 55.7
    hp = paper_table("hparams")
    beta_70b = hp[(hp.stage == "RLVR") & (hp.scale == "70B") & (hp.param == "beta")]["value"].item()
    assert beta_70b == "0.07"
    datasets = paper_table("datasets")
    # printed "n/a" stays a string instead of silently becoming NaN
    assert datasets.loc[datasets.dataset == "Preference mix 405B", "count"].item() == "n/a"


def test_flags_follow_the_tables_they_concern():
    assert [flag[:2] for flag in paper_table("main_405b").attrs["flags"]] == ["1.", "6."]
    assert [flag[:2] for flag in paper_table("hparams").attrs["flags"]] == ["2.", "3.", "4."]
    assert [flag[:2] for flag in paper_table("table23_rlvr_vs_dpo").attrs["flags"]] == ["5."]
    assert paper_table("main_8b_v5").attrs["flags"] == []


def test_readme_lists_the_same_flags_and_every_table():
    readme = PACKAGE_DIR.joinpath("README.md").read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", readme, flags=re.M)]
    assert numbers == sorted(FLAGS)
    for name in available_tables():
        assert f"`{name}`" in readme
    assert "arxiv.org/abs/2411.15124" in readme and "/work/" not in readme


@pytest.mark.parametrize("name", RESULTS_WITH_AVERAGES)
def test_averages_agree_with_their_cells_except_flagged(name):
    mismatches = average_mismatches(name)
    known = {("main_405b", "Avg_w_safety", "DeepSeek-V3"), ("table33_unseen", "Avg", "Llama-3.1-8B-Instruct")}
    found = {(name, row.row, row.model) for row in mismatches.itertuples()}
    assert found <= known, mismatches
    if name == "main_405b":
        deepseek = mismatches.iloc[0]
        assert deepseek.printed == 75.9 and deepseek.recomputed == pytest.approx(78.3, abs=0.05)


def test_sft_table_row_averages_agree():
    df = paper_table("table9_10_sft")
    cells = df.drop(columns=["model", "Avg", "table"])
    assert ((cells.mean(axis=1) - df["Avg"]).abs() <= 0.05 + 1e-9).all()


def test_average_check_can_fail():
    # the checker must see a changed cell: corrupt one in memory and recompute by hand
    df = paper_table("main_8b_v5").set_index("benchmark")
    df.loc["GSM8K", "Tulu-3-8B"] += 5
    cells = df.drop(index="Avg").select_dtypes("number")
    assert abs(cells["Tulu-3-8B"].mean() - df.loc["Avg", "Tulu-3-8B"]) > 0.05


def test_table4_long_is_tidy_and_ordered():
    df = table4_long()
    assert list(df.columns) == ["benchmark", "setting", "model", "value"]
    assert len(df) == 12 * 7
    assert df.iloc[0].benchmark == "Avg_wo_safety"
    row = df[(df.benchmark == "GSM8K") & (df.model == "Tulu-3-405B")]
    assert row.value.item() == 95.5 and row.setting.item() == "8-shot CoT"
    assert df.attrs["flags"][0].startswith("1.")


def test_long_table_refuses_non_results_tables():
    with pytest.raises(KeyError, match="benchmark-by-model"):
        long_table("hparams")


def test_stage_scores_never_mix_versions():
    v5 = tulu3_stage_scores("v5")
    assert set(v5.version) == {"v5"} and set(v5.scale) == {"8B", "70B", "405B"}
    assert not v5.benchmark.str.startswith("Avg").any()
    pick = v5[(v5.scale == "8B") & (v5.stage == "RLVR") & (v5.benchmark == "BigBenchHard")]
    assert pick.value.item() == 69.0  # v5; the v1 number is 66.0
    v1 = tulu3_stage_scores("v1")
    assert set(v1.version) == {"v1"} and set(v1.scale) == {"8B", "70B"}
    assert v1[(v1.scale == "8B") & (v1.stage == "RLVR") & (v1.benchmark == "BigBenchHard")].value.item() == 66.0
    with pytest.raises(ValueError, match="version"):
        tulu3_stage_scores("v3")


def test_figures_json_round_trip():
    figures = paper_figures()
    endpoints = figures["fig25_405b_rlvr"]["endpoints_from_tables"]["MATH_4shot_flex"]
    assert endpoints == {"405B_DPO": 59.9, "405B_RLVR": 67.3}
    # the endpoints are the Table 4 cells
    assert endpoints["405B_RLVR"] == cell("main_405b", "MATH", "Tulu-3-405B")
    assert endpoints["405B_DPO"] == cell("main_405b", "MATH", "Tulu-3-405B-DPO")
    flat = paper_table("figures")
    row = flat[(flat.figure == "fig19_rlvr_single_task_beta_sweep") & (flat.field == "betas")]
    assert row.value.item() == [0.01, 0.03, 0.05, 0.1]
    assert "tick ranges" in flat.attrs["note"]
    assert json.loads(PACKAGE_DIR.joinpath("figures.json").read_text(encoding="utf-8")) == figures


def test_frames_are_fresh_copies():
    first = paper_table("main_405b")
    first.loc[0, "Tulu-3-405B"] = -1
    assert paper_table("main_405b").loc[0, "Tulu-3-405B"] == 80.0
    assert isinstance(first, pd.DataFrame)
