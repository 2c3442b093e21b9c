"""Few-shot exemplars and few-shot chat messages."""

import re
from pathlib import Path

import pytest

from tulu_lab.data import load_popqa
from tulu_lab.data.fewshot import (
    GSM8K_COT_EXEMPLARS,
    MINERVA_MATH_EXEMPLARS,
    build_fewshot_messages,
    format_question,
)
from tulu_lab.data.loaders import last_boxed_content

FIXTURES = Path(__file__).parent / "fixtures"

# Wei et al. (2022) Table 20: the final answers of the 8 exemplars, in order
WEI_ANSWERS = [6, 5, 39, 8, 9, 29, 33, 8]


def test_gsm8k_exemplars_are_the_standard_eight():
    assert len(GSM8K_COT_EXEMPLARS) == 8
    assert GSM8K_COT_EXEMPLARS[0]["question"].startswith("There are 15 trees in the grove.")
    assert GSM8K_COT_EXEMPLARS[-1]["question"].startswith("Olivia has $23.")
    for exemplar, expected in zip(GSM8K_COT_EXEMPLARS, WEI_ANSWERS):
        match = re.search(r"The answer is (-?[0-9.,]+)\.$", exemplar["answer"])
        assert match and int(match.group(1)) == expected


def test_gsm8k_exemplar_arithmetic_is_right():
    # every "a op b = c" written in the chains of thought holds
    checked = 0
    for exemplar in GSM8K_COT_EXEMPLARS:
        for a, op, b, c in re.findall(r"(\d+) ([-+*x]) (\d+) (?:=|is) (\d+)", exemplar["answer"]):
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "*": a * b, "x": a * b}[op] == c
            checked += 1
    assert checked == 12


def test_minerva_exemplars():
    assert len(MINERVA_MATH_EXEMPLARS) == 4
    for exemplar in MINERVA_MATH_EXEMPLARS:
        solution = exemplar["solution"]
        assert last_boxed_content(solution) == exemplar["answer"]
        assert solution.endswith(f"Final Answer: The final answer is ${exemplar['answer']}$. I hope it is correct.")
    # LaTeX line breaks are a real double backslash, not a lost escape
    assert "30n&=480\\\\\n" in MINERVA_MATH_EXEMPLARS[2]["solution"]
    assert "6x-4y&=a,\\\\\n" in MINERVA_MATH_EXEMPLARS[3]["problem"]


def test_gsm8k_messages_are_multiturn():
    messages = build_fewshot_messages("gsm8k", "How many legs do 3 cats have?")
    assert len(messages) == 2 * 8 + 1
    assert [m["role"] for m in messages] == ["user", "assistant"] * 8 + ["user"]
    assert messages[0]["content"] == "Q: " + GSM8K_COT_EXEMPLARS[0]["question"] + "\nA:"
    assert messages[1]["content"] == GSM8K_COT_EXEMPLARS[0]["answer"]
    assert messages[-1]["content"] == "Q: How many legs do 3 cats have?\nA:"


def test_math_messages_and_options():
    messages = build_fewshot_messages("math", "What is $2+2$?", n_shots=2, system_prompt="Be exact.")
    assert messages[0] == {"role": "system", "content": "Be exact."}
    assert len(messages) == 1 + 2 * 2 + 1
    assert messages[-1]["content"] == "Problem:\nWhat is $2+2$?\n\nSolution:"
    assert messages[2]["content"] == MINERVA_MATH_EXEMPLARS[0]["solution"]
    assert build_fewshot_messages("math", "x?", n_shots=0) == [{"role": "user", "content": format_question("math", "x?")}]


def test_popqa_uses_given_exemplars_and_skips_the_question_itself():
    rows = load_popqa(FIXTURES / "popqa_small.tsv")
    question = rows[1]["question"]
    messages = build_fewshot_messages("popqa", question, n_shots=3, exemplars=rows)
    contents = [m["content"] for m in messages]
    assert question not in " ".join(contents[:-1])  # the answer cannot leak from an exemplar
    assert contents[0] == f"Q: {rows[0]['question']} A:"
    assert contents[1] == rows[0]["possible_answers"][0]
    assert contents[2] == f"Q: {rows[2]['question']} A:"
    assert contents[-1] == f"Q: {question} A:"
    with pytest.raises(ValueError, match="exemplars"):
        build_fewshot_messages("popqa", question)
    with pytest.raises(ValueError, match="usable exemplars"):
        build_fewshot_messages("popqa", question, n_shots=15, exemplars=rows)


def test_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        build_fewshot_messages("mmlu", "q")
    with pytest.raises(ValueError, match="n_shots"):
        build_fewshot_messages("gsm8k", "q", n_shots=9)
    with pytest.raises(ValueError, match="lacks field 'answer'"):
        build_fewshot_messages("gsm8k", "q", n_shots=1, exemplars=[{"question": "x"}])
