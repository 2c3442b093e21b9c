"""IFEval benchmark scoring (Google format): official strict/loose semantics, every instruction id."""

import json
from pathlib import Path

import pytest

from tulu_lab.rewards import IFEVAL_CHECKERS, ifeval_check
from tulu_lab.rewards.ifeval_benchmark import loose_variants

IFEVAL_DATA = Path("/work/shared/data/ifeval/input_data.jsonl")


def strict(instruction_id, response, prompt="", **kwargs):
    return ifeval_check(prompt, response, [instruction_id], [kwargs])["inst_level_strict"][0]


def loose(instruction_id, response, prompt="", **kwargs):
    return ifeval_check(prompt, response, [instruction_id], [kwargs])["inst_level_loose"][0]


@pytest.mark.skipif(not IFEVAL_DATA.exists(), reason="IFEval input_data.jsonl not available")
def test_every_instruction_id_in_the_benchmark_is_supported_and_scores():
    rows = [json.loads(line) for line in IFEVAL_DATA.open()]
    assert len(rows) == 541
    ids = {i for r in rows for i in r["instruction_id_list"]}
    assert ids <= set(IFEVAL_CHECKERS), ids - set(IFEVAL_CHECKERS)
    for row in rows:  # every row's kwargs are accepted, with a plain response
        result = ifeval_check(row["prompt"], "A plain answer.", row["instruction_id_list"], row["kwargs"])
        assert len(result["inst_level_strict"]) == len(row["instruction_id_list"])
        assert len(result["inst_level_loose"]) == len(row["instruction_id_list"])


def test_result_shape_and_prompt_level_is_all_of_the_instructions():
    result = ifeval_check(
        "p", "there are no commas in this short english sentence about the weather", ["punctuation:no_comma", "change_case:english_lowercase", "startend:quotation"], [{}, {}, {}]
    )
    assert result == {
        "prompt_level_strict": False,
        "prompt_level_loose": False,
        "inst_level_strict": [True, True, False],
        "inst_level_loose": [True, True, False],
    }


def test_loose_variants_are_the_official_eight():
    variants = loose_variants("Sure:\n*body*\nBye")
    assert variants == ["Sure:\n*body*\nBye", "*body*\nBye", "Sure:\n*body*", "*body*",
                        "Sure:\nbody\nBye", "body\nBye", "Sure:\nbody", "body"]  # fmt: skip


def test_loose_passes_when_a_preamble_line_breaks_strict():
    response = 'Here is the JSON:\n{"a": 1}'
    assert not strict("detectable_format:json_format", response)
    assert loose("detectable_format:json_format", response)


def test_loose_drops_asterisks():
    response = '*"Quoted answer"*'
    assert not strict("startend:quotation", response)
    assert loose("startend:quotation", response)


def test_empty_response_fails_everything():
    result = ifeval_check("p", "   ", ["punctuation:no_comma"], [{}])
    assert result["inst_level_strict"] == [False] and result["inst_level_loose"] == [False]


@pytest.mark.parametrize(
    "instruction_id, kwargs, passing, failing",
    [
        ("keywords:existence", {"keywords": ["cat", "dog"]}, "A Dog and a category.", "Just a cat."),
        ("keywords:frequency", {"keyword": "fish", "frequency": 3, "relation": "at least"}, "fish fish fishing", "fish fish"),
        ("keywords:frequency", {"keyword": "fish", "frequency": 2, "relation": "less than"}, "one fish", "fish fish"),
        ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "badminton", "that is Bad."),
        ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zz", "z"),
        ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two.", "One. Two. Three."),
        ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "A\n***\nB", "A\n***\n\n***\nB"),
        ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "don't stop", "stop now"),
        ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
         "First.\n\n\"Then, more.", "First.\n\nNext."),
        ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[a] and []", "[a] only"),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi\np.s. bye", "Hi\nPS bye"),
        ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi\nP. P. S more", "Hi\nP.S. more"),
        ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n- b\n**bold**", "* a\n* b\n- c"),
        ("detectable_format:constrained_response", {}, "I think My answer is maybe.", "My answer is probably."),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* **b**", "**b** * *"),
        ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
         "Section 1\nA\nSection 2\nB", "Section 1\nA"),
        ("detectable_format:json_format", {}, '```JSON\n[1, 2]\n```', "{'a': 1}"),
        ("detectable_format:title", {}, "<<My Title>>\ntext", "<<\n>> text"),
        ("combination:two_responses", {}, "One\n******\nTwo", "One\n******\nOne"),
        ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi! Say hi."),
        ("startend:end_checker", {"end_phrase": "Is there anything else?"}, 'Done. is there anything else?"', "Is there anything else? No."),
        ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"}, "I DON'T KNOW", "I know"),
        ("change_case:english_capital", {}, "THIS IS ENGLISH TEXT WRITTEN IN CAPITALS.", "THIS IS English."),
        ("change_case:english_lowercase", {}, "this is english text written in lowercase.", "this is English."),
        ("punctuation:no_comma", {}, "No commas.", "One, two."),
        ("startend:quotation", {}, '"Quoted"', '"'),
        ("language:response_language", {"language": "de"}, "Das ist ein kurzer deutscher Satz über das Wetter.",
         "This is a short English sentence about the weather."),
    ],
)
def test_official_semantics(instruction_id, kwargs, passing, failing):
    assert strict(instruction_id, passing, **kwargs) is True
    assert strict(instruction_id, failing, **kwargs) is False


def test_bullets_and_highlights_count_like_the_official_code():
    # Official: a "* * *" divider line matches the star-bullet pattern; "**bold**" is one highlight.
    assert strict("detectable_format:number_bullet_lists", "* * *\n* a", num_bullets=2)
    assert strict("detectable_format:number_highlighted_sections", "**bold** only", num_highlights=1)
    assert not strict("detectable_format:number_highlighted_sections", "**bold** only", num_highlights=2)


def test_undetectable_language_counts_as_followed():
    assert strict("language:response_language", "1234 5678", language="hi")


@pytest.mark.parametrize(
    "ids, kwargs, message",
    [
        (["punctuation:no_comma"], [], "1 ids but kwargs has 0"),
        (["keywords:rhymes"], [{}], "unknown IFEval instruction id 'keywords:rhymes'"),
        (["keywords:existence"], [{"keywords": None}], "lack \\['keywords'\\]"),
        (["keywords:frequency"], [{"keyword": "a", "frequency": 1, "relation": "around"}], "relation"),
    ],
)
def test_bad_arguments_raise_clear_errors(ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ifeval_check("p", "response", ids, kwargs)
