"""Tülu's RLVR-IFeval constraint functions: one passing and one failing case (at least) each."""

import json

import pytest

from tulu_lab.rewards import IF_FUNCTIONS, verify
from tulu_lab.rewards.language import langdetect_available


def gt(func_name, **arguments):
    """An RLVR-IFeval ground truth as the data has it: every argument key present, mostly null."""
    row = dict.fromkeys(
        ["N", "quantifier", "end_phrase", "keyword_list", "word", "forbidden_words", "letter", "i",
         "first_word", "postscript_marker", "options", "section_splitter", "original_prompt",
         "language"]
    )  # fmt: skip
    row.update(arguments)
    return json.dumps({"func_name": func_name, **row})


def check(response, func_name, **arguments):
    return verify("ifeval", response, gt(func_name, **arguments))


def test_all_25_functions_are_registered():
    assert len(IF_FUNCTIONS) == 25


CASES = [
    # (func_name, arguments, passing response, failing response)
    ("verify_keywords", {"keyword_list": ["cat", "blue sky"]}, "A Cat under a blue sky.", "A category, blue skyline."),
    ("verify_keyword_frequency", {"word": "fish", "N": 2}, "Fish and more fish.", "Fish, fish, fish; fishing."),
    ("validate_forbidden_words", {"forbidden_words": ["bad", "evil"]}, "Badminton is good.", "That is BAD."),
    ("verify_letter_frequency", {"letter": "z", "N": 3}, "Zig zag zoo", "zigzag"),
    ("verify_paragraph_count", {"N": 2}, "First part.\n* * *\nSecond part.", "One.\n* * *\n\n* * *\nTwo."),
    ("validate_word_constraint", {"N": 5, "quantifier": "at least"}, "one two three four five", "one two three four"),
    ("validate_word_constraint", {"N": 4, "quantifier": "at most"}, "one two three four", "one two three four five"),
    ("validate_word_constraint", {"N": 10, "quantifier": "around"}, " ".join(["w"] * 11), " ".join(["w"] * 12)),
    ("verify_sentence_constraint", {"N": 2, "quantifier": "at least"}, "One. Two.", "Only Dr. Who."),
    ("verify_sentence_constraint", {"N": 3, "quantifier": "around"}, "Go. Run. Sit. Stop.", "Go."),
    ("verify_sentence_constraint", {"N": 1, "quantifier": "at most"}, "It is 3.14 m long.", "One. Two."),
    ("validate_paragraphs", {"N": 2, "first_word": "then", "i": 2}, "Start here.\n\n**Then**, go on.", "Start here.\n\nThereafter go on."),
    ("verify_postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. See you soon.", "Hi. I added a P.S. here\nP.S."),
    ("verify_postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S Bring cake.", "Hi.\nP.S. Bring cake."),
    ("validate_placeholders", {"N": 2}, "Dear [name], at [address].", "Dear [name], at [ ]."),
    ("verify_bullet_points", {"N": 2}, "List:\n* one\n- two\n**Note**\n* * *", "* one\n* two\n* three"),
    ("validate_title", {}, "<<Poem of Joy>>\nLa la.", "<< >>\nNo title."),
    ("validate_choice", {"options": "('My answer is yes.', 'My answer is no.', 'My answer is maybe.')"},
     "My answer is yes.", "My answer is yes. My answer is no."),
    ("validate_choice", {"options": ["yes", "no"]}, "Yes, definitely.", "I know it."),
    ("validate_highlighted_sections", {"N": 2}, "*one* and **two**", "*one* and ** **"),
    ("validate_sections", {"N": 2, "section_splitter": "SECTION"}, "SECTION 1\nA\n## SECTION 2\nB", "SECTION 1\nA\nB"),
    ("validate_json_format", {}, '```json\n{"a": 1}\n```', '{"a": 1'),
    ("validate_repeat_prompt", {"original_prompt": "Write a poem about cats."},
     "Write a poem about  cats.\nCats purr.", "Sure! Write a poem about cats."),
    ("validate_two_responses", {}, "Answer one.\n******\nAnswer two.", "Same.\n******\nSame."),
    ("validate_uppercase", {}, "ALL CAPS, 100%!", "ALL CAPS except this"),
    ("validate_lowercase", {}, "all lower, 100%!", "all lower but One"),
    ("validate_frequency_capital_words", {"N": 2, "quantifier": "at least"}, "NASA and the USA", "Only NASA here"),
    ("validate_frequency_capital_words", {"N": 20, "quantifier": "around"}, " ".join(["BIG"] * 22), " ".join(["BIG"] * 17)),
    ("validate_frequency_capital_words", {"N": 1, "quantifier": "at most"}, "ONE word", "TWO WORDS"),
    ("validate_end", {"end_phrase": "Any other questions?"}, "Done. Any other questions?\n", "Any other questions? Yes."),
    ("validate_quotation", {}, '"Wrapped in quotes."', '"'),
    ("validate_no_commas", {}, "No commas here.", "One, two."),
]


@pytest.mark.parametrize("func_name, arguments, passing, failing", CASES, ids=[c[0] for c in CASES])
def test_function_passes_and_fails(func_name, arguments, passing, failing):
    assert check(passing, func_name, **arguments) is True
    assert check(failing, func_name, **arguments) is False


def test_every_function_has_a_case():
    covered = {c[0] for c in CASES} | {"validate_response_language"}
    assert covered == set(IF_FUNCTIONS)


def test_response_language():
    hindi = "यह एक छोटा सा वाक्य है और यह हिंदी में लिखा गया है।"
    english = "This is a short sentence and it is written in English."
    assert check(hindi, "validate_response_language", language="hi")
    assert check(hindi, "validate_response_language", language="Hindi")  # names work too
    assert not check(english, "validate_response_language", language="hi")
    assert check(english, "validate_response_language", language="en")
    assert not check("12345 !!!", "validate_response_language", language="en")  # undetectable


# --- the known bugs of the November 2024 code, fixed ---------------------------------------------


def test_placeholders_returns_a_bool_not_a_truthy_tuple():
    assert check("no placeholders at all", "validate_placeholders", N=3) is False


def test_choice_tests_option_in_response_not_the_reverse():
    # Old code: `response in option` -> "My" was "in" an option; a real answer was not.
    options = ["My answer is yes.", "My answer is no."]
    assert check("My", "validate_choice", options=options) is False
    assert check("My answer is no. Because I said so.", "validate_choice", options=options) is True


def test_around_for_capital_words_is_not_an_exact_count():
    assert check(" ".join(["WORD"] * 11), "validate_frequency_capital_words", N=10, quantifier="around")


# --- ground-truth handling ----------------------------------------------------------------------


def test_null_arguments_are_dropped_and_the_chat_prefix_ignored():
    assert verify("ifeval", "<|user|>\nHi\n<|assistant|>\nall lower", gt("validate_lowercase"))


def test_dict_ground_truth_is_accepted():
    assert verify("ifeval", "no commas", {"func_name": "validate_no_commas", "N": None})


@pytest.mark.parametrize(
    "ground_truth, message",
    [
        ("{not json", "not valid JSON"),
        ('["func_name"]', "JSON object"),
        ('{"N": 3}', "no 'func_name'"),
        ('{"func_name": "validate_everything"}', "unknown func_name 'validate_everything'"),
        ('{"func_name": "validate_placeholders"}', "missing \\['N'\\]"),
        ('{"func_name": "validate_no_commas", "N": 3}', "unexpected \\['N'\\]"),
        ('{"func_name": "validate_word_constraint", "N": 3, "quantifier": "roughly"}', "quantifier"),
        ('{"func_name": "validate_placeholders", "N": "three"}', "argument N"),
        ('{"func_name": "validate_word_constraint", "N": 3, "quantifier": 1}', "argument quantifier"),
        ('{"func_name": "verify_letter_frequency", "letter": "ab", "N": 1}', "single character"),
        ('{"func_name": "validate_paragraphs", "N": 2, "first_word": "a", "i": 0}', "1-based"),
        ('{"func_name": "validate_choice", "options": 5}', "list of strings"),
    ],
)
def test_bad_ground_truth_raises_a_clear_error(ground_truth, message):
    with pytest.raises(ValueError, match=message):
        verify("ifeval", "response", ground_truth)


def test_unknown_dataset_names_the_allowed_values():
    with pytest.raises(ValueError, match="'mmlu'.*gsm8k.*ifeval.*math"):
        verify("mmlu", "x", "y")


@pytest.mark.skipif(not langdetect_available(), reason="langdetect not installed")
def test_language_check_uses_langdetect_when_installed_and_is_deterministic():
    text = "Dies ist ein kurzer deutscher Satz über das Wetter."
    results = {check(text, "validate_response_language", language="de") for _ in range(5)}
    assert results == {True}
