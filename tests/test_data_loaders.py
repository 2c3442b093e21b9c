"""Loaders: real benchmark files (when present), fixtures, malformed rows, the Hugging Face fallback."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network in tests: a Hub lookup must fail fast

import json
from pathlib import Path

import pytest

from tulu_lab.data import loaders
from tulu_lab.data.loaders import (
    DataFormatError,
    DataSourceNotFoundError,
    gsm8k_final_answer,
    last_boxed_content,
    load_gsm8k,
    load_ifeval,
    load_math,
    load_popqa,
    load_preference,
    load_records,
    load_rlvr,
    load_sft,
    remove_calculator_annotations,
)

SHARED = Path("/work/shared/data")
FIXTURES = Path(__file__).parent / "fixtures"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="benchmark files not on this machine")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def message(role, content):
    return {"role": role, "content": content}


# --- real files ---------------------------------------------------------------------------------

@needs_shared
def test_gsm8k_real_files():
    train = load_gsm8k(SHARED / "gsm8k" / "train.jsonl", split="train")
    test = load_gsm8k(SHARED / "gsm8k", split="test")  # a folder resolves to {split}.jsonl
    assert (len(train), len(test)) == (7473, 1319)
    first = test[0]
    assert first["question"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first["final_answer"] == "18"
    assert first["answer"].endswith("#### 18")
    assert first["id"] == "gsm8k/test/0"
    assert train[0]["final_answer"] == "72"
    # every final answer is an integer, sometimes with thousands commas ("1,080")
    assert all(row["final_answer"].replace(",", "").lstrip("-").isdigit() for row in train + test)


@needs_shared
def test_math500_real_file():
    rows = load_math(SHARED / "math" / "test.jsonl")
    assert len(rows) == 500
    assert rows[0]["id"] == "test/precalculus/807.json"
    assert rows[0]["answer"] == r"\left( 3, \frac{\pi}{2} \right)"
    assert {row["level"] for row in rows} == {1, 2, 3, 4, 5}
    assert len({row["subject"] for row in rows}) == 7
    # MATH-500's answer field is the last \boxed{} of its solution
    assert all(last_boxed_content(row["solution"]) == row["answer"] for row in rows)


@needs_shared
def test_ifeval_real_file():
    rows = load_ifeval(SHARED / "ifeval" / "input_data.jsonl")
    assert len(rows) == 541
    first = rows[0]
    assert first["key"] == 1000 and first["id"] == "1000"
    assert first["instruction_id_list"][0] == "punctuation:no_comma"
    assert first["kwargs"][2] == {"relation": "at least", "num_words": 300}
    assert all(len(r["kwargs"]) == len(r["instruction_id_list"]) for r in rows)


@needs_shared
def test_limit_reads_only_the_first_rows():
    rows = load_gsm8k(SHARED / "gsm8k" / "test.jsonl", limit=3)
    assert [row["id"] for row in rows] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert load_gsm8k(SHARED / "gsm8k" / "test.jsonl", limit=0) == []


# --- fixtures and small files -------------------------------------------------------------------

def test_popqa_fixture():
    rows = load_popqa(FIXTURES / "popqa_small.tsv")
    assert len(rows) == 12
    by_question = {row["question"]: row for row in rows}
    jaws = by_question["Who was the director of Jaws?"]
    assert jaws["possible_answers"][0] == "Steven Spielberg" and "Spielberg" in jaws["possible_answers"]
    assert isinstance(jaws["s_pop"], int) and jaws["prop"] == "director"
    ivory = by_question["What is the capital of Côte d'Ivoire?"]  # non-ASCII and an apostrophe survive
    assert ivory["possible_answers"] == ["Yamoussoukro"]
    assert all(row["possible_answers"][0] == row["obj"] for row in rows)
    assert load_popqa(FIXTURES / "popqa_small.tsv", limit=5)[-1]["id"] == "1004"


def test_gsm8k_helpers():
    solution = "He has 3*4=<<3*4=12>>12 pens.\n#### 12"
    assert gsm8k_final_answer(solution) == "12"
    assert gsm8k_final_answer("no marker here") is None
    assert gsm8k_final_answer("#### -5") == "-5"
    assert remove_calculator_annotations(solution) == "He has 3*4=12 pens.\n#### 12"


def test_math_original_hendrycks_layout(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "level": "Level 1", "type": "Prealgebra"},
        {"problem": "Half of 1?", "solution": "So $\\boxed{\\frac{1}{2}}$.", "level": "Level ?", "type": "Algebra"},
    ])
    rows = load_math(path)
    assert rows[0]["answer"] == "2" and rows[0]["level"] == 1 and rows[0]["subject"] == "Prealgebra"
    assert rows[1]["answer"] == "\\frac{1}{2}" and rows[1]["level"] is None


def test_tulu_formats_round_trip(tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", [
        {"id": "a", "messages": [message("system", "Be brief."), message("user", "Hi"), message("assistant", "Hello")]},
    ])
    assert load_sft(sft)[0]["messages"][2] == message("assistant", "Hello")
    assert load_sft(sft)[0]["id"] == "a"  # other fields are kept

    pref = write_jsonl(tmp_path / "pref.jsonl", [
        {"prompt": "2+2?", "chosen": [message("user", "2+2?"), message("assistant", "4")],
         "rejected": [message("user", "2+2?"), message("assistant", "5")]},
    ])
    assert load_preference(pref)[0]["rejected"][-1]["content"] == "5"

    rlvr = write_jsonl(tmp_path / "rlvr.jsonl", [
        {"messages": [message("user", "2+2?")], "ground_truth": "4", "dataset": "gsm8k"},
    ])
    assert load_rlvr(rlvr)[0]["dataset"] == "gsm8k"


def test_other_local_formats(tmp_path):
    import pandas as pd

    records = [{"question": "q1", "answer": "a\n#### 1"}, {"question": "q2", "answer": "b\n#### 2"}]
    (tmp_path / "rows.json").write_text(json.dumps(records))
    pd.DataFrame(records).to_parquet(tmp_path / "rows.parquet")
    pd.DataFrame(records).to_csv(tmp_path / "rows.csv", index=False)
    for name in ("rows.json", "rows.parquet", "rows.csv"):
        rows = load_gsm8k(tmp_path / name)
        assert [r["final_answer"] for r in rows] == ["1", "2"], name
    assert load_records(tmp_path / "rows.parquet") == records


# --- malformed rows ---------------------------------------------------------------------------

def assert_error(excinfo, *parts):
    text = str(excinfo.value)
    for part in parts:
        assert part in text, f"{part!r} not in {text!r}"


def test_missing_field_names_file_line_field(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": "q", "answer": "x\n#### 1"},
        {"question": "q2"},
    ])
    with pytest.raises(DataFormatError) as excinfo:
        load_gsm8k(path)
    assert_error(excinfo, "gsm.jsonl", "line 2", "'answer'", "missing")
    assert excinfo.value.field == "answer" and excinfo.value.location == "line 2"


def test_bad_json_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "#### 1"}, "", '{"question": "q",'])
    with pytest.raises(DataFormatError) as excinfo:
        load_gsm8k(path)
    assert_error(excinfo, "bad.jsonl", "line 3", "JSON object")  # blank line 2 is counted, not skipped


def test_wrong_types(tmp_path):
    path = write_jsonl(tmp_path / "ifeval.jsonl", [
        {"key": "1000", "prompt": "p", "instruction_id_list": ["a:b"], "kwargs": [{}]},
    ])
    with pytest.raises(DataFormatError) as excinfo:
        load_ifeval(path)
    assert_error(excinfo, "ifeval.jsonl", "line 1", "'key'", "an integer", "str")

    path = write_jsonl(tmp_path / "ifeval2.jsonl", [
        {"key": 1, "prompt": "p", "instruction_id_list": ["a:b", "c:d"], "kwargs": [{}]},
    ])
    with pytest.raises(DataFormatError) as excinfo:
        load_ifeval(path)
    assert_error(excinfo, "ifeval2.jsonl", "line 1", "'kwargs'", "2 argument objects")


def test_gsm8k_answer_without_final_line(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "It is 5."}])
    with pytest.raises(DataFormatError) as excinfo:
        load_gsm8k(path)
    assert_error(excinfo, "line 1", "'answer'", "#### <number>")


@pytest.mark.parametrize("messages, field, expected", [
    ([message("user", "hi"), {"role": "bot", "content": "x"}], "messages[1].role", "system/user/assistant"),
    ([message("user", "hi"), {"role": "assistant", "content": 5}], "messages[1].content", "a string"),
    ([message("user", "hi"), {"role": "assistant"}], "messages[1].content", "missing"),
    ([message("user", "hi"), message("system", "late")], "messages[1].role", "first message"),
    ([message("user", "hi")], "messages[0].role", "last message to be 'assistant'"),
    ([], "messages", "non-empty list"),
    ("not a list", "messages", "does not parse"),
])
def test_sft_message_errors(tmp_path, messages, field, expected):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [message("user", "ok"), message("assistant", "fine")]},
        {"messages": messages},
    ])
    with pytest.raises(DataFormatError) as excinfo:
        load_sft(path)
    assert_error(excinfo, "sft.jsonl", "line 2", f"'{field}'", expected)


def test_preference_and_rlvr_errors(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"chosen": [message("user", "q"), message("assistant", "a")]}])
    with pytest.raises(DataFormatError) as excinfo:
        load_preference(path)
    assert_error(excinfo, "pref.jsonl", "line 1", "'rejected'", "missing")

    path = write_jsonl(tmp_path / "rlvr.jsonl", [{"messages": [message("user", "q")], "ground_truth": 4, "dataset": "gsm8k"}])
    with pytest.raises(DataFormatError) as excinfo:
        load_rlvr(path)
    assert_error(excinfo, "rlvr.jsonl", "line 1", "'ground_truth'", "a string", "int")

    path = write_jsonl(tmp_path / "rlvr2.jsonl", [{"messages": [message("user", "q"), message("assistant", "a")],
                                                   "ground_truth": "4", "dataset": "gsm8k"}])
    with pytest.raises(DataFormatError) as excinfo:
        load_rlvr(path)
    assert_error(excinfo, "rlvr2.jsonl", "'messages[1].role'", "end with a 'user' message")


def test_popqa_bad_alias_list_names_tsv_line(tmp_path):
    lines = (FIXTURES / "popqa_small.tsv").read_text(encoding="utf-8").splitlines()
    broken = lines[3].rsplit("\t", 1)[0] + "\tSalzburg"  # not a JSON list
    (tmp_path / "popqa.tsv").write_text("\n".join(lines[:3] + [broken] + lines[4:]) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as excinfo:
        load_popqa(tmp_path / "popqa.tsv")
    assert_error(excinfo, "popqa.tsv", "line 4", "'possible_answers'", "JSON list")


def test_tsv_row_with_extra_column(tmp_path):
    (tmp_path / "x.tsv").write_text("question\tpossible_answers\nQ?\t[\"a\"]\textra\n")
    with pytest.raises(DataFormatError) as excinfo:
        load_popqa(tmp_path / "x.tsv")
    assert_error(excinfo, "x.tsv", "line 2", "columns")


# --- sources that are not there -----------------------------------------------------------------

def test_missing_local_file_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError("a path ending in .jsonl must not be looked up on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(DataSourceNotFoundError, match="no such file"):
        load_gsm8k(tmp_path / "nope.jsonl")


def test_hub_failure_is_wrapped_with_a_local_file_hint(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceNotFoundError) as excinfo:
        load_gsm8k("openai/gsm8k", split="test")
    assert_error(excinfo, "'openai/gsm8k'", "config 'main'", "split 'test'", "ConnectionError",
                 "local file", "jsonl")


def test_hub_failure_real_offline_call():
    # HF_HUB_OFFLINE=1 (set above) makes datasets refuse at once
    with pytest.raises(DataSourceNotFoundError, match="MATH-500"):
        load_math("HuggingFaceH4/MATH-500")


def test_hub_rows_are_converted(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([
            {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["change_case:english_lowercase"],
             "kwargs": [{"num_words": None, "relation": None}]},  # the Hub copy fills unused args with None
        ])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_ifeval(loaders.IFEVAL_HF_ID)  # without a source the shipped copy is read
    assert calls == [(loaders.IFEVAL_HF_ID, None, "train")]
    assert rows[0]["kwargs"] == [{}]


def test_bad_limit():
    with pytest.raises(ValueError, match="limit"):
        load_popqa(FIXTURES / "popqa_small.tsv", limit=-1)
