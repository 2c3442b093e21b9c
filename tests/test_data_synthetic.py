"""Synthetic generators: determinism, correct answers, difficulty, disjoint splits, valid rows."""

import json
import re
from fractions import Fraction
from math import gcd

import pytest

from tulu_lab.data import load_preference, load_rlvr, load_sft
from tulu_lab.rewards import verify
from tulu_lab.data.loaders import last_boxed_content
from tulu_lab.data.synthetic import (
    DEFAULT_HIGH,
    DEFAULT_LOW,
    GSM_INSTRUCTION,
    TEMPLATE_NAMES,
    answer_from_key,
    generate_word_problems,
    gsm_prompt,
    make_splits,
    normalise_question,
    preference_row,
    rlvr_row,
    sft_row,
    wrong_solution,
)
from tulu_lab.data.synthetic_ifeval import IFEVAL_FUNCTIONS, generate_ifeval_prompts
from tulu_lab.data.synthetic_math import MATH_KINDS, generate_math_problems, latex_number

STRICT = re.compile(r"#### (-?[0-9.,]+)")  # lm-evaluation-harness gsm8k strict-match
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (-?\d+)")


def last_number(text: str) -> int:
    return int(re.findall(r"-?\d+", text.replace(",", ""))[-1])




# --- GSM-style word problems ---------------------------------------------------------------------

def test_same_seed_same_problems_other_seed_other_problems():
    first = generate_word_problems(50, seed=3)
    again = generate_word_problems(50, seed=3)
    other = generate_word_problems(50, seed=4)
    assert [(p.id, p.question, p.solution) for p in first] == [(p.id, p.question, p.solution) for p in again]
    assert len({p.id for p in first} & {p.id for p in other}) < 10
    assert [p.question for p in first] != [p.question for p in other]


def test_generation_does_not_touch_the_global_rng():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_word_problems(20, seed=0)
    assert random.random() == expected


def test_answers_are_right_and_the_solution_shows_the_work():
    problems = generate_word_problems(400, seed=11, min_steps=1, max_steps=4)
    assert {p.template for p in problems} == set(TEMPLATE_NAMES)
    for problem in problems:
        lines = problem.solution.split("\n")
        assert lines[-1] == f"#### {problem.answer}"
        assert STRICT.search(problem.solution).group(1) == str(problem.answer)
        assert last_number(problem.solution) == problem.answer
        assert isinstance(problem.answer, int) and problem.answer > 0
        # one calculation per line, each one true, each building on the previous result
        previous = None
        for line in lines[:-1]:
            (a, op, b, c), = EQUATION.findall(line)
            a, b, c = int(a), int(b), int(c)
            if op == "/":
                assert a % b == 0, line  # divisions are exact
            assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == c, line
            if previous is not None:
                assert a == previous, line
            previous = c
        assert previous == problem.answer
        assert len(lines) - 1 == problem.n_steps
        # the key alone (no text) gives the same answer
        assert answer_from_key(problem.key) == problem.answer


def test_every_number_in_the_solution_comes_from_the_question():
    # operands in the solution must be stated in the story (or be earlier results)
    for problem in generate_word_problems(200, seed=5, max_steps=3):
        stated = set(re.findall(r"\d+", problem.question))
        words = {"half": "2", "third": "3", "quarter": "4", "fifth": "5", "sixth": "6", "seventh": "7",
                 "eighth": "8", "ninth": "9", "tenth": "10"}
        stated |= {digits for word, digits in words.items() if f"one {word} as old" in problem.question}
        results = set()
        for line in problem.solution.split("\n")[:-1]:
            (a, _, b, c), = EQUATION.findall(line)
            assert a in stated | results and b in stated | results, (problem.question, line)
            results.add(c)


def test_default_difficulty_is_one_or_two_steps_with_small_operands():
    problems = generate_word_problems(300, seed=0)
    assert {p.n_steps for p in problems} == {1, 2}
    for problem in problems:
        _, setup, start, ops = problem.key
        assert all(DEFAULT_LOW <= number <= DEFAULT_HIGH for number in start)
        assert all(DEFAULT_LOW <= operand <= DEFAULT_HIGH or kind == "mul" for kind, operand in ops)


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_difficulty_knob_sets_the_number_of_steps(steps):
    problems = generate_word_problems(60, seed=2, min_steps=steps, max_steps=steps)
    assert all(p.n_steps == steps for p in problems)
    assert all(len(p.solution.split("\n")) == steps + 1 for p in problems)


def test_number_range_knob():
    problems = generate_word_problems(100, seed=1, low=50, high=90)
    for problem in problems:
        _, _, start, ops = problem.key
        assert all(50 <= n <= 90 for n in start)
        assert all(50 <= n <= 90 for kind, n in ops if kind in ("add", "sub"))


def test_problems_within_a_set_are_distinct():
    problems = generate_word_problems(2000, seed=0)
    assert len({p.key for p in problems}) == 2000
    assert len({normalise_question(p.question) for p in problems}) == 2000
    assert len({p.id for p in problems}) == 2000


def test_ids_are_stable_hashes_of_the_key():
    problem = generate_word_problems(1, seed=0)[0]
    import hashlib

    assert problem.id == "gsm-syn-" + hashlib.sha1(repr(problem.key).encode()).hexdigest()[:12]


def test_splits_are_disjoint():
    train, test = make_splits(3000, 500, seed=7)
    assert (len(train), len(test)) == (3000, 500)
    assert not {p.key for p in train} & {p.key for p in test}
    assert not {normalise_question(p.question) for p in train} & {normalise_question(p.question) for p in test}
    # the test split does not depend on how much training data is asked for
    _, test_again = make_splits(10, 500, seed=7)
    assert [p.id for p in test_again] == [p.id for p in test]


def test_splits_disjoint_even_when_the_space_is_small():
    # 1-step problems with numbers 2..4: few distinct keys, so collisions would be frequent
    train, test = make_splits(60, 30, seed=0, max_steps=1, low=2, high=4)
    assert not {p.key for p in train} & {p.key for p in test}


@pytest.mark.parametrize("kind", ["math", "ifeval"])
def test_math_and_ifeval_splits_are_disjoint(kind):
    train, test = make_splits(400, 100, seed=3, kind=kind)
    assert (len(train), len(test)) == (400, 100)
    assert not {p.key for p in train} & {p.key for p in test}
    text = (lambda p: p.problem) if kind == "math" else (lambda p: p.prompt)
    assert not {text(p) for p in train} & {text(p) for p in test}
    with pytest.raises(ValueError, match="kind"):
        make_splits(1, 1, kind="mmlu")


def test_too_many_problems_for_the_range_is_an_error():
    with pytest.raises(ValueError, match="widen the number range"):
        generate_word_problems(10_000, seed=0, max_steps=1, low=2, high=3)


@pytest.mark.parametrize("kwargs", [dict(min_steps=0), dict(min_steps=3, max_steps=2), dict(low=5, high=4),
                                    dict(low=0), dict(templates=["poetry"])])
def test_bad_difficulty_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_word_problems(5, seed=0, **kwargs)


# --- rows ---------------------------------------------------------------------------------------

def test_prompt_has_the_fixed_instruction():
    problem = generate_word_problems(1, seed=0)[0]
    assert gsm_prompt(problem) == problem.question + GSM_INSTRUCTION == problem.prompt
    assert "####" in GSM_INSTRUCTION


def test_preference_pairs_chosen_right_rejected_wrong():
    problems = generate_word_problems(300, seed=9, max_steps=4)
    for problem in problems:
        row = preference_row(problem, seed=1)
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        assert row["chosen"][0] == row["rejected"][0] == {"role": "user", "content": gsm_prompt(problem)}
        assert verify("gsm8k", chosen, str(problem.answer))
        assert not verify("gsm8k", rejected, str(problem.answer))
        # same format, same number of steps: only the arithmetic differs
        assert len(rejected.split("\n")) == len(chosen.split("\n"))
        assert re.fullmatch(r"#### \d+", rejected.split("\n")[-1])
        # exactly one step is miscalculated; the rest follow from it
        lines = rejected.split("\n")[:-1]
        wrong_steps, previous = 0, None
        for line in lines:
            (a, op, b, c), = EQUATION.findall(line)
            a, b, c = int(a), int(b), int(c)
            wrong_steps += {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] != c
            assert previous is None or a == previous, rejected  # the slip is carried on
            previous = c
        assert wrong_steps == 1
        assert previous == last_number(rejected)
    assert preference_row(problems[0], seed=1) == preference_row(problems[0], seed=1)


def test_wrong_solution_differs_across_seeds():
    problem = generate_word_problems(1, seed=0, min_steps=3, max_steps=3)[0]
    assert len({wrong_solution(problem, seed)[0] for seed in range(10)}) > 1


def test_rows_load_with_the_tulu_loaders(tmp_path):
    problems = generate_word_problems(20, seed=0)
    math_problems = generate_math_problems(10, seed=0)
    ifeval = generate_ifeval_prompts(10, seed=0)
    files = {
        "rlvr.jsonl": [rlvr_row(item) for item in problems + math_problems + ifeval],
        "sft.jsonl": [sft_row(item) for item in problems + math_problems],
        "pref.jsonl": [preference_row(item) for item in problems],
    }
    for name, rows in files.items():
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    rlvr = load_rlvr(tmp_path / "rlvr.jsonl")
    assert [row["dataset"] for row in rlvr] == ["gsm8k"] * 20 + ["math"] * 10 + ["ifeval"] * 10
    assert rlvr[0]["ground_truth"] == str(problems[0].answer)
    assert rlvr[0]["messages"] == [{"role": "user", "content": gsm_prompt(problems[0])}]
    sft = load_sft(tmp_path / "sft.jsonl")
    assert sft[0]["messages"][1]["content"] == problems[0].solution
    assert len(load_preference(tmp_path / "pref.jsonl")) == 20
    with pytest.raises(TypeError):
        sft_row(ifeval[0])


# --- MATH-style problems ------------------------------------------------------------------------

def expected_math_answer(kind: str, numbers: tuple) -> Fraction:
    if kind == "linear_equation":
        a, b, c = numbers
        return Fraction(c - b, a)
    if kind == "fraction_sum":
        p, q, sign, r, s = numbers
        return Fraction(p, q) + (Fraction(r, s) if sign == "+" else -Fraction(r, s))
    if kind == "gcd":
        return Fraction(gcd(*numbers))
    if kind == "lcm":
        m, n = numbers
        return Fraction(m * n // gcd(m, n))
    if kind == "order_of_operations":
        form, a, b, c, d = numbers
        return Fraction([a * (b + c) - d, (a + b) * c + d, a * b - c * d][form])
    if kind == "percent":
        percent, whole = numbers
        return Fraction(percent * whole, 100)
    raise AssertionError(kind)


def test_math_answers_are_right():
    problems = generate_math_problems(300, seed=4)
    assert {p.kind for p in problems} == set(MATH_KINDS)
    for problem in problems:
        kind, numbers = problem.key
        expected = expected_math_answer(kind, numbers)
        if kind in ("linear_equation", "percent"):
            assert expected.denominator == 1  # built to come out whole
        assert problem.answer == latex_number(expected)
        assert last_boxed_content(problem.solution) == problem.answer
        assert problem.solution.endswith(f"Final Answer: The final answer is ${problem.answer}$. I hope it is correct.")


def test_math_solutions_pass_the_math_verifier():
    for problem in generate_math_problems(60, seed=8):
        assert verify("math", problem.solution, problem.answer)
        wrong = problem.solution.replace("\\boxed{" + problem.answer + "}", "\\boxed{" + problem.answer + " + 1}")
        wrong = wrong.replace(f"${problem.answer}$.", f"${problem.answer} + 1$.")
        assert wrong.count(problem.answer + " + 1") == 2
        assert not verify("math", wrong, problem.answer)


def test_math_deterministic_and_distinct():
    first = generate_math_problems(200, seed=1)
    assert first == generate_math_problems(200, seed=1)
    assert first != generate_math_problems(200, seed=2)
    assert len({p.key for p in first}) == len({p.problem for p in first}) == 200


def test_latex_number():
    assert latex_number(Fraction(3, 4)) == r"\frac{3}{4}"
    assert latex_number(Fraction(-1, 6)) == r"-\frac{1}{6}"
    assert latex_number(Fraction(8, 4)) == "2"


# --- IFEval-style prompts -----------------------------------------------------------------------

# argument names of the RLVR-IFeval functions (open-instruct if_functions.py)
IFEVAL_ARGUMENTS = {
    "validate_lowercase": set(), "validate_uppercase": set(), "validate_no_commas": set(),
    "validate_word_constraint": {"N", "quantifier"}, "verify_bullet_points": {"N"},
    "validate_end": {"end_phrase"}, "validate_title": set(), "verify_postscript": {"postscript_marker"},
    "verify_keywords": {"keyword_list"}, "validate_highlighted_sections": {"N"},
}


def test_ifeval_ground_truths():
    prompts = generate_ifeval_prompts(300, seed=0)
    assert {p.func_name for p in prompts} == set(IFEVAL_FUNCTIONS) == set(IFEVAL_ARGUMENTS)
    for item in prompts:
        truth = json.loads(item.ground_truth)
        assert truth.pop("func_name") == item.func_name
        assert set(truth) == IFEVAL_ARGUMENTS[item.func_name]
        if "quantifier" in truth:
            assert truth["quantifier"] in ("at least", "around", "at most")
            assert f"{truth['quantifier']} {truth['N']} words" in item.prompt
        if "end_phrase" in truth:
            assert truth["end_phrase"] in item.prompt
        if "keyword_list" in truth:
            assert all(f'"{word}"' in item.prompt for word in truth["keyword_list"])
    assert [p.prompt for p in prompts] == [p.prompt for p in generate_ifeval_prompts(300, seed=0)]
    assert len({p.key for p in prompts}) == 300


def compliant_and_violating(truth: dict) -> tuple[str, str]:
    """A response that meets the constraint and one that breaks it."""
    name = truth["func_name"]
    if name == "validate_lowercase":
        return "a quiet afternoon by the window.", "A quiet afternoon."
    if name == "validate_uppercase":
        return "A QUIET AFTERNOON.", "A quiet afternoon."
    if name == "validate_no_commas":
        return "Rain fell all day and we stayed in.", "Rain fell, and we stayed in."
    if name == "validate_word_constraint":
        n, quantifier = truth["N"], truth["quantifier"]
        wrong = {"at least": 1, "at most": n + 50, "around": 2 * n}[quantifier]
        return " ".join(["word"] * n), " ".join(["word"] * wrong)
    if name == "verify_bullet_points":
        bullets = lambda k: "\n".join(f"* point {i}" for i in range(k))
        return bullets(truth["N"]), bullets(truth["N"] + 1)
    if name == "validate_end":
        return "Here is the note. " + truth["end_phrase"], truth["end_phrase"] + " Thanks."
    if name == "validate_title":
        return "<<rainy days>>\nIt rained.", "Rainy days\nIt rained."
    if name == "verify_postscript":
        return f"It rained.\n\n{truth['postscript_marker']} Bring an umbrella.", "It rained."
    if name == "verify_keywords":
        return "We saw " + " and ".join(truth["keyword_list"]) + ".", "We saw nothing."
    if name == "validate_highlighted_sections":
        return " ".join(f"*part {i}*" for i in range(truth["N"])), "No highlights here."
    raise AssertionError(name)


def test_ifeval_ground_truths_work_with_the_ifeval_verifier():
    for item in generate_ifeval_prompts(200, seed=1):
        good, bad = compliant_and_violating(json.loads(item.ground_truth))
        assert verify("ifeval", good, item.ground_truth), (item.ground_truth, good)
        assert not verify("ifeval", bad, item.ground_truth), (item.ground_truth, bad)
