"""verify(..., mode="tulu3"): Tülu 3's November 2024 reward, each known quirk reproduced; the default
mode keeps the corrected behaviour for the same input."""

import inspect
import json
import threading

import pytest

from tulu_lab.rewards import start_symbolic_worker, verify
from tulu_lab.rewards.tulu3_compat import TULU3_IF_FUNCTIONS, verify_math_tulu3


@pytest.fixture(scope="module", autouse=True)
def warm_workers():
    """The default math verifier's symbolic workers (slow to start on busy CPUs)."""
    assert start_symbolic_worker(wait=True)


def ifeval(func_name, **arguments):
    return json.dumps({"func_name": func_name, **arguments})


def both(dataset, response, ground_truth):
    """(tulu3 verdict, default verdict)."""
    return verify(dataset, response, ground_truth, mode="tulu3"), verify(dataset, response, ground_truth)


# Each row: a known open-instruct behaviour, the input that shows it, Tülu 3's verdict. The default
# verifier must give the opposite verdict on the same input.
KNOWN = [
    # gsm8k: the regex loses a leading minus on integers ...
    ("gsm8k minus sign lost", "gsm8k", "So the change is -5", "-5", False),
    ("gsm8k minus sign lost (reward for the wrong sign)", "gsm8k", "So the change is -5", "5", True),
    # ... and compares strings, not numbers
    ("gsm8k string comparison", "gsm8k", "She pays 18.0 dollars.", "18", False),
    # math: \fbox is found but cannot be unboxed, and there is no math-verify leniency
    ("math fbox dropped", "math", r"The answer is \fbox{5}.", "5", False),
    ("math unordered list", "math", r"The roots are \boxed{2, 1}", "1, 2", False),
    ("math interval with its variable", "math", r"So \boxed{x \in (1, 2)}", "(1, 2)", False),
    # ifeval
    ("placeholder check returns a tuple", "ifeval", "No brackets here.", ifeval("validate_placeholders", N=3), True),
    ("validate_choice reversed: response inside an option", "ifeval", "ye",
     ifeval("validate_choice", options=["yes", "no", "maybe"]), True),
    ("validate_choice reversed: option inside the response", "ifeval", "My answer is yes.",
     ifeval("validate_choice", options=["yes", "no", "maybe"]), False),
    ("capital words 'around' means exactly", "ifeval", " ".join(["WORD"] * 11) + " and more",
     ifeval("validate_frequency_capital_words", N=10, quantifier="around"), False),
    ("keywords as substrings", "ifeval", "We concatenate the strings.", ifeval("verify_keywords", keyword_list=["cat"]),
     True),
    ("forbidden words as substrings", "ifeval", "We concatenate the strings.",
     ifeval("validate_forbidden_words", forbidden_words=["cat"]), False),
    ("bullets: any line starting with - or *", "ifeval", "---\n* one\n* two",
     ifeval("verify_bullet_points", N=2), False),
    ("an empty title counts", "ifeval", "<<>> A poem", ifeval("validate_title"), True),
    ("a lone quote is a quotation", "ifeval", '"', ifeval("validate_quotation"), True),
]


@pytest.mark.parametrize("name, dataset, response, ground_truth, tulu3_verdict", KNOWN, ids=[k[0] for k in KNOWN])
def test_tulu3_mode_reproduces_the_known_behaviour_and_default_does_not(name, dataset, response, ground_truth,
                                                                         tulu3_verdict):
    tulu3, default = both(dataset, response, ground_truth)
    assert tulu3 is tulu3_verdict, name
    assert default is (not tulu3_verdict), name


def test_both_modes_agree_where_tulu_was_right():
    agree = [
        ("gsm8k", "The total is 1,234 apples.", "1234", True),
        ("gsm8k", "It is -2.5 degrees.", "-2.5", True),  # the sign survives on decimals
        ("math", r"Thus $\boxed{\dfrac{1}{2}}$.", r"\frac{1}{2}", True),
        ("math", r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", True),  # sympy equivalence
        ("math", "Final Answer: The final answer is $12$. I hope it is correct.", "12", True),
        ("math", r"\boxed{7}", "8", False),
        ("ifeval", "<|assistant|>\nall lower case", ifeval("validate_lowercase"), True),
        ("ifeval", "WORD " * 10, ifeval("validate_frequency_capital_words", N=10, quantifier="around"), True),
        ("ifeval", "Hello [name], at [place].", ifeval("validate_placeholders", N=2, extra=None), True),
    ]
    for dataset, response, ground_truth, expected in agree:
        assert both(dataset, response, ground_truth) == (expected, expected), (dataset, response)


def test_tulu3_math_uses_hendrycks_strings_and_sympy():
    assert verify_math_tulu3(r"\boxed{0.5}", r"\frac{1}{2}")  # "0.5" -> \frac{1}{2}
    assert verify_math_tulu3(r"\boxed{3 \text{ cm}}", "3")  # units on the right removed
    assert verify_math_tulu3(r"\boxed{x+1+x}", "2x+1")  # sympy: the difference simplifies to 0
    assert not verify_math_tulu3(r"\boxed{0.333}", r"\frac{1}{3}")


def test_tulu3_math_is_bounded_off_the_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(verify_math_tulu3(r"\boxed{x+1+x}", "2x+1")))
    thread.start()
    thread.join(30)
    assert results == [True]


def test_tulu3_ifeval_reads_results_by_truthiness_and_drops_null_arguments():
    assert TULU3_IF_FUNCTIONS["validate_placeholders"]("[a]", 5) == (False, ["a"])  # the raw tuple
    assert verify("ifeval", "text", json.dumps({"N": 1}), mode="tulu3") is False  # no func_name: no reward
    assert len(TULU3_IF_FUNCTIONS) == 25


def test_default_mode_keeps_its_signature_and_modes_are_checked():
    parameters = inspect.signature(verify).parameters
    assert list(parameters)[:3] == ["dataset", "response", "ground_truth"]
    assert parameters["mode"].default == "default"
    with pytest.raises(ValueError, match="unknown verify mode"):
        verify("gsm8k", "5", "5", mode="tulu4")
    with pytest.raises(ValueError, match="unknown dataset"):
        verify("mmlu", "5", "5", mode="tulu3")
