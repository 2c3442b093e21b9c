"""MATH verifier: flex extraction, Hendrycks/Minerva normalisation, symbolic equality, time bound."""

import json
import threading
import time
from pathlib import Path

import pytest

from tulu_lab.rewards import (
    extract_math_answer,
    math_answer_candidates,
    normalize_math_answer,
    start_symbolic_worker,
    verify,
)
from tulu_lab.rewards.math_answer import last_boxed_answer, minerva_answer, verify_math

MATH_500 = Path("/work/shared/data/math/test.jsonl")
BOUND_S = 5.0  # every call must return within this, whatever the input


@pytest.fixture(scope="module", autouse=True)
def warm_workers():
    """Wait for the symbolic workers to import sympy, as an evaluation would (slow on busy CPUs)."""
    assert start_symbolic_worker(wait=True)


# --- extraction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),  # the last box wins
        ("\\fbox{7}", "7"),
        ("\\boxed {x+1}", "x+1"),
        ("$\\boxed 5$", "5"),
        ("\\boxed{\\frac{1}{2}", None),  # never closed
        ("no box here", None),
    ],
)
def test_last_boxed_answer_matches_nested_braces(text, expected):
    assert last_boxed_answer(text) == expected


def test_minerva_final_answer_line():
    text = "We get 4.\nFinal Answer: The final answer is $4$. I hope it is correct."
    assert minerva_answer(text) == "$4$"
    assert minerva_answer("Final Answer: The final answer is 12.") == "12"
    assert minerva_answer("The answer is 4.") is None


def test_candidates_follow_the_flex_order():
    both = "\\boxed{3}\nFinal Answer: The final answer is $4$. I hope it is correct."
    assert math_answer_candidates(both) == ["3", "$4$"]
    assert math_answer_candidates("we find $x=2$ and then $y = 5$") == ["y = 5"]
    assert math_answer_candidates("display $$\\frac{1}{2}$$") == ["\\frac{1}{2}"]
    assert math_answer_candidates("  just 42  ") == ["just 42"]
    assert extract_math_answer("just 42") is None
    assert extract_math_answer("so $\\boxed{42}$") == "42"


# --- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("1/2", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("10\\%", "10"),
        ("5\\text{ cm}", "5"),
        ("5 \\text{ inches}", "5"),
        ("12 \\mbox{ meters}", "12"),
        ("\\$1,000", "1000"),
        ("18.0", "18"),
        (".5", "\\frac{1}{2}"),
        ("k = 7", "7"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("x^{2}", "x^2"),
        ("\\text{(B)}", "(B)"),
        ("\\boxed{7}", "7"),
        ("1, 2,\\text{ and } 3", "1,2,3"),
    ],
)
def test_normalize_math_answer(raw, normal):
    assert normalize_math_answer(raw) == normal


def test_normalisation_keeps_left_intact_unlike_the_old_ft_removal():
    # The old Minerva list removed "ft" anywhere, turning "\left" into "\le".
    assert normalize_math_answer("\\leftarrow") == "\\leftarrow"
    assert normalize_math_answer("3\\text{ ft}") == "3"


# --- verification -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, ground_truth",
    [
        ("The answer is $\\boxed{\\frac12}$.", "0.5"),
        ("$\\boxed{0.5}$", "\\frac{1}{2}"),
        ("$\\boxed{\\dfrac{3}{4}}$", "3/4"),
        ("\\boxed{10\\text{ inches}}", "10"),
        ("\\boxed{90^\\circ}", "90"),
        ("\\boxed{1,000}", "1000"),
        ("\\boxed{x = 5}", "5"),
        ("Final Answer: The final answer is $\\frac{\\sqrt{3}}{2}$. I hope it is correct.", "\\frac{\\sqrt3}{2}"),
        ("So the point is $(3, \\pi/2)$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{(x+1)^2}", "x^2+2x+1"),  # needs the symbolic stage
        ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}"),  # sets are unordered
        ("\\boxed{\\sqrt{4}}", "2"),
        ("\\boxed{[1, 2)}", "[1,2)"),
        ("<|user|>\nQ\n<|assistant|>\n\\boxed{7}", "7"),
        ("so $\\boxed{3}$", "The answer is $\\boxed{3}$."),  # ground truth given as a solution
    ],
)
def test_equivalent_answers_pass(response, ground_truth):
    # A generous limit: this is about correctness, and sympy is slow on a busy machine.
    assert verify_math(response, ground_truth, timeout_s=30)


@pytest.mark.parametrize(
    "response, ground_truth",
    [
        ("\\boxed{3}", "4"),
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("\\boxed{(1, 2)}", "(2, 1)"),  # tuples are ordered
        ("\\boxed{5} is wrong, it is \\boxed{6}", "5"),  # only the last box counts
        ("\\boxed{x^2}", "x^3"),
        ("I don't know.", "7"),
        ("", "7"),
        ("\\boxed{-2}", "2"),
    ],
)
def test_different_answers_fail(response, ground_truth):
    assert not verify_math(response, ground_truth, timeout_s=30)


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_ground_truth_raises(bad):
    with pytest.raises(ValueError, match="math ground_truth"):
        verify("math", "\\boxed{1}", bad)


# --- safety and time bound ----------------------------------------------------------------------

HOSTILE = [
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{10^{10^{10}}}",
    "\\boxed{(10^{10^{8}})!}",
    "\\boxed{" + "{" * 300 + "1" + "}" * 300 + "}",
    "\\boxed{" + "\\frac{" * 200 + "}",
    "$" * 10_000,
    "\\boxed{" * 5_000,
    "Final Answer: The final answer is " * 2_000,
    "1." * 50_000,
]


@pytest.mark.parametrize("response", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_inputs_return_false_within_the_bound(response):
    started = time.monotonic()
    assert not verify_math(response, "1")
    assert time.monotonic() - started < BOUND_S


def test_model_text_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    for payload in (
        f"\\boxed{{__import__('pathlib').Path('{marker}').touch()}}",
        f"$__import__('os').system('touch {marker}')$",
    ):
        assert not verify_math(payload, "0")
    assert not marker.exists()


def test_bound_holds_and_answers_stay_right_off_the_main_thread():
    results = {}

    def work():
        started = time.monotonic()
        hostile = verify_math("\\boxed{9^{9^{9^{9}}}}", "1")
        hostile_s = time.monotonic() - started
        results["hostile"] = (hostile, hostile_s)
        results["symbolic"] = verify_math("\\boxed{\\sqrt{4}}", "2")
        results["string"] = verify_math("\\boxed{\\frac12}", "0.5")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    hostile, hostile_s = results["hostile"]
    assert hostile is False and hostile_s < BOUND_S
    assert results["symbolic"] is True
    assert results["string"] is True


def test_a_killed_worker_is_replaced_by_a_warm_spare():
    assert start_symbolic_worker(wait=True)
    assert not verify_math("\\boxed{9^{9^{9^{9}}}}", "1")  # times out: the worker is killed
    started = time.monotonic()
    assert verify_math("\\boxed{\\sqrt{4}}", "2")  # a quick symbolic question, for the warm spare
    assert time.monotonic() - started < BOUND_S


def test_concurrent_callers_each_respect_the_bound():
    durations = []

    def work(response):
        started = time.monotonic()
        verify_math(response, "1")
        durations.append(time.monotonic() - started)

    threads = [threading.Thread(target=work, args=(r,)) for r in ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{x}", "\\boxed{2}"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(durations) == 3 and max(durations) < BOUND_S


# --- real data ----------------------------------------------------------------------------------


@pytest.mark.skipif(not MATH_500.exists(), reason="MATH-500 file not available")
def test_every_math500_solution_verifies_against_its_answer():
    rows = [json.loads(line) for line in MATH_500.open()]
    assert all(verify_math(r["solution"], r["answer"]) for r in rows)
    minerva = "Final Answer: The final answer is ${}$. I hope it is correct."
    assert all(verify_math(minerva.format(r["answer"]), r["answer"]) for r in rows)


@pytest.mark.skipif(not MATH_500.exists(), reason="MATH-500 file not available")
def test_math500_answers_do_not_match_other_problems():
    rows = [json.loads(line) for line in MATH_500.open()][:40]
    wrong = sum(verify_math(f"\\boxed{{{a['answer']}}}", b["answer"]) for a, b in zip(rows, rows[1:]))
    assert wrong <= 1  # neighbouring problems rarely share an answer
