"""GSM8K verifier: last-number extraction, numeric comparison, strict/flexible extractors."""

import json
from pathlib import Path

import pytest

from tulu_lab.rewards import extract_gsm8k_answer, gsm8k_gold_answer, verify, verify_gsm8k

GSM8K_TEST = Path("/work/shared/data/gsm8k/test.jsonl")


@pytest.mark.parametrize(
    "response, ground_truth",
    [
        ("So she makes 9 * 2 = $18 every day. The answer is 18.", "18"),
        ("The answer is 18.0", "18"),  # numeric, not string, comparison
        ("The answer is 18", "18.00"),
        ("The total is 1,000 apples.", "1000"),
        ("The total is $1,234,567.", "1234567"),
        ("The temperature fell to -5 degrees.", "-5"),
        ("x = -$5", "-5"),
        ("The answer is .5", "0.5"),
        ("First 3 then 4, finally 12", "12"),  # the LAST number counts
        ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 9", "9"),
        ("It is 1,2,3 and then 7", "7"),
    ],
)
def test_correct_answers_pass(response, ground_truth):
    assert verify_gsm8k(response, ground_truth)


@pytest.mark.parametrize(
    "response, ground_truth",
    [
        ("The answer is 5", "-5"),  # the sign matters
        ("The answer is -5", "5"),
        ("The answer is 18, not 17", "18"),  # last number is 17
        ("No idea.", "18"),  # no number at all
        ("", "0"),
        ("10-5", "-5"),  # subtraction, not a negative number: the last number is 5
        ("The answer is 18.5", "18"),
        ("12,3456", "123456"),  # not a thousands-grouped number: the last number is 3456
    ],
)
def test_wrong_answers_fail(response, ground_truth):
    assert not verify_gsm8k(response, ground_truth)


def test_ground_truth_can_be_a_full_gsm8k_solution():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,072"
    assert gsm8k_gold_answer(solution) == 1072
    assert verify_gsm8k("She sold 1072 clips.", solution)
    assert not verify_gsm8k("She sold 24 clips.", solution)


@pytest.mark.parametrize("bad", ["", "eighteen", "#### ", "1e999999999", "nan"])
def test_bad_ground_truth_raises_with_the_value(bad):
    with pytest.raises(ValueError, match="gsm8k ground_truth"):
        verify_gsm8k("18", bad)


def test_chat_prefix_is_ignored():
    decoded = "<|user|>\nWhat is 7 + 11?\n<|assistant|>\nThe answer is 18."
    assert verify_gsm8k(decoded, "18")
    assert not verify_gsm8k("<|user|>\nIs it 18?\n<|assistant|>\nI think 17.", "18")


@pytest.mark.parametrize(
    "text, flexible, strict",
    [
        ("The answer is 42.\n#### 42", "42", "42"),
        ("#### 1,000.", "1000", "1000"),
        ("#### -3 apples, then 5", "5", "-3"),
        ("The answer is $12.50.", "12.50", None),
        ("nothing here", None, None),
    ],
)
def test_strict_and_flexible_extraction(text, flexible, strict):
    assert extract_gsm8k_answer(text) == flexible
    assert extract_gsm8k_answer(text, mode="flexible") == flexible
    assert extract_gsm8k_answer(text, mode="strict") == strict


def test_unknown_extraction_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        extract_gsm8k_answer("1", mode="loose")


def test_dataset_name_is_case_insensitive():
    assert verify("GSM8K", "It is 3", "3")
    assert verify("gsm8k", "It is 3", "3")


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="GSM8K test file not available")
def test_every_reference_solution_verifies_against_itself_and_not_a_neighbour():
    rows = [json.loads(line) for line in GSM8K_TEST.open()]
    answers = [r["answer"] for r in rows]
    assert all(verify_gsm8k(a, a) for a in answers)
    # Shift by one: a different problem's solution is (almost always) wrong.
    mismatched = sum(verify_gsm8k(a, b) for a, b in zip(answers, answers[1:] + answers[:1]))
    assert mismatched < 0.02 * len(answers)
