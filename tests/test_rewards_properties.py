"""Property tests: random and adversarial strings never raise and never exceed the time bound."""

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tulu_lab.rewards import IF_FUNCTIONS, ifeval_check, verify
from tulu_lab.rewards.language import detect_language

BOUND_S = 5.0
IFEVAL_DATA = Path("/work/shared/data/ifeval/input_data.jsonl")

# Pieces that stress the extractors, normalisers and the symbolic stage when glued together.
LATEX_PIECES = [
    "\\boxed{", "\\fbox{", "{", "}", "^", "^{", "9", "10", "0.5", "-", "\\frac", "\\dfrac", "\\sqrt",
    "$", "$$", "\\left(", "\\right)", "(", ")", "[", "]", ",", ".", "=", "x", "\\pi", "\\infty",
    "\\text{ cm}", "^\\circ", "\\%", "!", "\\{", "\\}", "\\cup", " ", "\n", "\\\\",
    "Final Answer: The final answer is ", ". I hope it is correct.", "<|assistant|>\n", "#### ",
    "1,000", "$-5", "__import__('os')", "\\underbrace{",
]  # fmt: skip
adversarial = st.lists(st.sampled_from(LATEX_PIECES), max_size=60).map("".join)
any_text = st.one_of(st.text(max_size=300), adversarial)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@FAST
@given(response=any_text, answer=st.integers(-10**6, 10**6))
def test_gsm8k_never_raises_and_is_fast(response, answer):
    result, seconds = _timed(lambda: verify("gsm8k", response, str(answer)))
    assert isinstance(result, bool) and seconds < 0.1


@FAST
@given(response=any_text, gold=st.one_of(st.sampled_from(["1", "\\frac{1}{2}", "(1,2)", "x^2+1"]), adversarial))
def test_math_never_raises_and_respects_the_bound(response, gold):
    if not gold.strip():
        gold = "1"
    result, seconds = _timed(lambda: verify("math", response, gold))
    assert isinstance(result, bool) and seconds < BOUND_S


RLVR_ARGUMENTS = {
    "verify_keywords": {"keyword_list": ["a", "b c"]}, "verify_keyword_frequency": {"word": "a", "N": 1},
    "validate_forbidden_words": {"forbidden_words": ["x"]}, "verify_letter_frequency": {"letter": "a", "N": 2},
    "validate_response_language": {"language": "en"}, "verify_paragraph_count": {"N": 2},
    "validate_word_constraint": {"N": 5, "quantifier": "around"},
    "verify_sentence_constraint": {"N": 2, "quantifier": "at least"},
    "validate_paragraphs": {"N": 2, "first_word": "a", "i": 2}, "verify_postscript": {"postscript_marker": "P.S."},
    "validate_placeholders": {"N": 1}, "verify_bullet_points": {"N": 1}, "validate_title": {},
    "validate_choice": {"options": ["yes", "no"]}, "validate_highlighted_sections": {"N": 1},
    "validate_sections": {"N": 2, "section_splitter": "Section"}, "validate_json_format": {},
    "validate_repeat_prompt": {"original_prompt": "Say it"}, "validate_two_responses": {},
    "validate_uppercase": {}, "validate_lowercase": {},
    "validate_frequency_capital_words": {"N": 2, "quantifier": "at most"},
    "validate_end": {"end_phrase": "Bye."}, "validate_quotation": {}, "validate_no_commas": {},
}  # fmt: skip
markdown = st.lists(
    st.sampled_from(["*", "**", "* * *", "******", "\n", "\n\n", "P.S.", "<<", ">>", "[", "]", "Section 1", " ",
                     "word", "WORD", ".", "?", "!", '"', "```json", "{", "}", ",", "a", "yes", "- "]),
    max_size=80,
).map("".join)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """Load the language profiles and start the symbolic worker before timing anything."""
    detect_language("warm up the language detector")
    verify("math", "\\boxed{x+1}", "1+x")


def test_rlvr_argument_table_covers_every_function():
    assert set(RLVR_ARGUMENTS) == set(IF_FUNCTIONS)


@FAST
@given(response=st.one_of(st.text(max_size=400), markdown), name=st.sampled_from(sorted(RLVR_ARGUMENTS)))
def test_ifeval_rlvr_never_raises(response, name):
    ground_truth = json.dumps({"func_name": name, **RLVR_ARGUMENTS[name]})
    result, seconds = _timed(lambda: verify("ifeval", response, ground_truth))
    assert isinstance(result, bool) and seconds < 1.0


@pytest.fixture(scope="module")
def ifeval_rows():
    if not IFEVAL_DATA.exists():
        pytest.skip("IFEval input_data.jsonl not available")
    return [json.loads(line) for line in IFEVAL_DATA.open()]


@FAST
@given(response=st.one_of(st.text(max_size=400), markdown), index=st.integers(0, 540))
def test_ifeval_benchmark_never_raises(ifeval_rows, response, index):
    row = ifeval_rows[index]
    result = ifeval_check(row["prompt"], response, row["instruction_id_list"], row["kwargs"])
    assert len(result["inst_level_loose"]) == len(row["instruction_id_list"])
    # loose can only be more lenient than strict
    assert all(lo or not s for s, lo in zip(result["inst_level_strict"], result["inst_level_loose"]))


@pytest.mark.slow
@HEAVY
@given(response=any_text, gold=st.one_of(st.text(min_size=1, max_size=50), adversarial))
def test_math_bound_heavy(response, gold):
    if not gold.strip():
        gold = "1"
    result, seconds = _timed(lambda: verify("math", response, gold))
    assert isinstance(result, bool) and seconds < BOUND_S


@pytest.mark.slow
@HEAVY
@given(response=st.one_of(st.text(max_size=2000), markdown), name=st.sampled_from(sorted(RLVR_ARGUMENTS)))
def test_ifeval_rlvr_heavy(response, name):
    ground_truth = json.dumps({"func_name": name, **RLVR_ARGUMENTS[name]})
    assert isinstance(verify("ifeval", response, ground_truth), bool)
