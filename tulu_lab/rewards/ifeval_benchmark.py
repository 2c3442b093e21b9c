"""The IFEval benchmark's scoring (Google format: instruction_id_list + kwargs), offline.

``ifeval_check`` scores one response the way google-research's ``instruction_following_eval``
does: every instruction is checked on the response ("strict"), and on eight variants of it
("loose": the response, with its first line removed, its last line removed, or both; each as is
and with every "*" deleted), passing if any variant passes. An empty (all-whitespace) variant
never passes. The prompt level passes when all its instructions pass.

Each checker follows the official ``check_following`` (read from instructions.py), with these
unavoidable or deliberate differences:

- sentences are counted with the offline splitter in ``text_split`` instead of NLTK Punkt, and
  all-capital words with its tokenizer instead of NLTK's ``word_tokenize``;
- language detection uses ``langdetect`` (as IFEval) when installed, else the offline detector in
  ``language``; an undetectable text counts as following the instruction, as in IFEval;
- keywords, section splitters and postscript markers are matched literally (IFEval passes
  them to ``re`` unescaped; the same for plain words, but no crash on "?" or "(");
- regexes that are quadratic on hostile text (placeholders, titles, bullets, postscripts) are
  replaced by linear scans that count exactly the same matches.

Checked against per-instruction results of the official scorer for 9,154 responses of 17 models
(the English evaluations published in shisa-ai/M-IFEval): 28,176 of 28,218 strict and loose
instruction checks agree. Every difference is a language check (langdetect, unseeded there) or a
letter_frequency row asking for "#" or "!", for which that older scorer drew a random letter.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from .language import detect_language, prepare_language_detector
from .text_split import count_sentences, count_words, word_tokens
from .time_bound import VERIFY_TIME_LIMIT_S, VerifierTimeout, check_deadline, time_bound

__all__ = ["IFEVAL_CHECKERS", "ifeval_check", "loose_variants"]

_RELATIONS = ("less than", "at least")
_CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _relation_holds(actual: int, threshold: int, relation: str) -> bool:
    if relation == "less than":
        return actual < threshold
    if relation == "at least":
        return actual >= threshold
    raise ValueError(f"relation must be one of {_RELATIONS}, got {relation!r}")


def _language_is(text: str, code: str) -> bool:
    detected = detect_language(text)
    return True if detected is None else detected == code


# --- checkers: (response, kwargs) -> bool --------------------------------------------------------


def _keywords_existence(value: str, kw: dict) -> bool:
    return all(re.search(re.escape(k), value, re.IGNORECASE) for k in kw["keywords"])


def _keywords_frequency(value: str, kw: dict) -> bool:
    found = len(re.findall(re.escape(kw["keyword"].strip()), value, re.IGNORECASE))
    return _relation_holds(found, kw["frequency"], kw["relation"])


def _keywords_forbidden(value: str, kw: dict) -> bool:
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", value, re.IGNORECASE) for w in set(kw["forbidden_words"])
    )


def _letter_frequency(value: str, kw: dict) -> bool:
    found = value.lower().count(kw["letter"].strip().lower())
    return _relation_holds(found, kw["let_frequency"], kw["let_relation"])


def _response_language(value: str, kw: dict) -> bool:
    return _language_is(value, kw["language"])


def _number_sentences(value: str, kw: dict) -> bool:
    return _relation_holds(count_sentences(value), kw["num_sentences"], kw["relation"])


def _number_paragraphs(value: str, kw: dict) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", value)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == kw["num_paragraphs"]


def _number_words(value: str, kw: dict) -> bool:
    return _relation_holds(count_words(value), kw["num_words"], kw["relation"])


def _nth_paragraph_first_word(value: str, kw: dict) -> bool:
    paragraphs = value.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    nth = kw["nth_paragraph"]
    if not 1 <= nth <= count:
        return False
    paragraph = paragraphs[nth - 1].strip()  # indexes the raw split, empty pieces included
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first_word = ""
    for letter in word:
        if letter in {".", ",", "?", "!", "'", '"'}:
            break
        first_word += letter.lower()
    return count == kw["num_paragraphs"] and first_word == kw["first_word"].lower()


def _count_lazy_brackets(value: str) -> int:
    """len(re.findall(r"\\[.*?\\]", value)) in linear time.

    The regex is quadratic on "[[[[..." (every "[" scans to the end of its line). A "[" whose line
    has no later "]" fails, and so does every later "[" on that line, so skip to the next line.
    """
    count, position = 0, 0
    while True:
        start = value.find("[", position)
        if start < 0:
            return count
        line_end = value.find("\n", start)
        line_end = len(value) if line_end < 0 else line_end
        close = value.find("]", start + 1, line_end)
        if close < 0:
            position = line_end + 1
        else:
            count += 1
            position = close + 1


def _number_placeholders(value: str, kw: dict) -> bool:
    return _count_lazy_brackets(value) >= kw["num_placeholders"]


def _postscript(value: str, kw: dict) -> bool:
    # IFEval: re.findall(r"\s*" + marker_pattern + r".*$", value.lower(), re.M). The "\s*" prefix
    # and ".*$" suffix always match, so this is a search for the marker pattern alone (and the
    # search stays linear where the findall was quadratic on long runs of spaces).
    marker = kw["postscript_marker"].strip()
    if marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = re.escape(marker.lower())
    return re.search(pattern, value.lower()) is not None


def _count_official_bullets(value: str) -> int:
    """IFEval's bullet count, in linear time.

    IFEval counts re.findall(r"^\\s*\\*[^\\*].*$", value, re.M) plus re.findall(r"^\\s*-.*$", ...).
    "\\s*" also crosses line breaks, which makes those regexes quadratic on long blank runs. Here
    each line start skips whitespace (line breaks included) to the first visible character, exactly
    as the regex does; a line start swallowed by an earlier match or skip is not tried again.
    """
    total = 0
    for bullet in ("*", "-"):
        position, length = 0, len(value)
        line_start = 0
        lines = 0
        while line_start <= length:
            lines += 1
            if lines % 4096 == 0:
                check_deadline()
            if line_start >= position:
                visible = line_start
                while visible < length and value[visible].isspace():
                    visible += 1
                if bullet == "*":
                    matched = (
                        visible + 1 < length and value[visible] == "*" and value[visible + 1] != "*"
                    )
                    rest = visible + 2
                else:
                    matched = visible < length and value[visible] == "-"
                    rest = visible + 1
                if matched:
                    total += 1
                    line_end = value.find("\n", min(rest, length))
                    position = length if line_end < 0 else line_end
                else:
                    position = visible  # any line start before `visible` reaches it too
            next_break = value.find("\n", max(line_start, position))
            if next_break < 0:
                break
            line_start = next_break + 1
    return total


def _number_bullet_lists(value: str, kw: dict) -> bool:
    return _count_official_bullets(value) == kw["num_bullets"]


def _constrained_response(value: str, kw: dict) -> bool:
    value = value.strip()
    return any(option in value for option in _CONSTRAINED_RESPONSE_OPTIONS)


def _number_highlighted_sections(value: str, kw: dict) -> bool:
    single = sum(1 for h in re.findall(r"\*[^\n\*]*\*", value) if h.strip("*").strip())
    double = sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", value) if h[2:-2].strip())
    return single + double >= kw["num_highlights"]


def _multiple_sections(value: str, kw: dict) -> bool:
    splitter = kw["section_spliter"].strip()
    sections = re.split(r"\s?" + re.escape(splitter) + r"\s?\d+\s?", value)
    return len(sections) - 1 >= kw["num_sections"]


def _json_format(value: str, kw: dict) -> bool:
    value = value.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except (ValueError, RecursionError):
        return False
    return True


def _title(value: str, kw: dict) -> bool:
    # IFEval: any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", value)).
    # On one line the greedy regex matches at most once: from the first "<<" to the last ">>"
    # (with at least one character between). Checked line by line, in linear time.
    for line in value.split("\n"):
        start, end = line.find("<<"), line.rfind(">>")
        if start >= 0 and end >= start + 3 and line[start : end + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


def _two_responses(value: str, kw: dict) -> bool:
    responses = value.split("******")
    valid = []
    for index, response in enumerate(responses):
        if not response.strip():
            if index not in (0, len(responses) - 1):
                return False
        else:
            valid.append(response)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _repeat_prompt(value: str, kw: dict) -> bool:
    return value.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower())


def _end_checker(value: str, kw: dict) -> bool:
    return value.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())


def _capital_word_frequency(value: str, kw: dict) -> bool:
    capitals = sum(1 for word in word_tokens(value) if word.isupper())
    return _relation_holds(capitals, kw["capital_frequency"], kw["capital_relation"])


def _english_capital(value: str, kw: dict) -> bool:
    return value.isupper() and _language_is(value, "en")


def _english_lowercase(value: str, kw: dict) -> bool:
    return value.islower() and _language_is(value, "en")


def _no_comma(value: str, kw: dict) -> bool:
    return "," not in value


def _quotation(value: str, kw: dict) -> bool:
    value = value.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


# instruction id -> (checker, required kwargs)
IFEVAL_CHECKERS: dict[str, tuple[Callable[[str, dict], bool], tuple[str, ...]]] = {
    "keywords:existence": (_keywords_existence, ("keywords",)),
    "keywords:frequency": (_keywords_frequency, ("keyword", "frequency", "relation")),
    "keywords:forbidden_words": (_keywords_forbidden, ("forbidden_words",)),
    "keywords:letter_frequency": (_letter_frequency, ("letter", "let_frequency", "let_relation")),
    "language:response_language": (_response_language, ("language",)),
    "length_constraints:number_sentences": (_number_sentences, ("num_sentences", "relation")),
    "length_constraints:number_paragraphs": (_number_paragraphs, ("num_paragraphs",)),
    "length_constraints:number_words": (_number_words, ("num_words", "relation")),
    "length_constraints:nth_paragraph_first_word": (
        _nth_paragraph_first_word,
        ("num_paragraphs", "nth_paragraph", "first_word"),
    ),
    "detectable_content:number_placeholders": (_number_placeholders, ("num_placeholders",)),
    "detectable_content:postscript": (_postscript, ("postscript_marker",)),
    "detectable_format:number_bullet_lists": (_number_bullet_lists, ("num_bullets",)),
    "detectable_format:constrained_response": (_constrained_response, ()),
    "detectable_format:number_highlighted_sections": (_number_highlighted_sections, ("num_highlights",)),
    "detectable_format:multiple_sections": (_multiple_sections, ("section_spliter", "num_sections")),
    "detectable_format:json_format": (_json_format, ()),
    "detectable_format:title": (_title, ()),
    "combination:two_responses": (_two_responses, ()),
    "combination:repeat_prompt": (_repeat_prompt, ("prompt_to_repeat",)),
    "startend:end_checker": (_end_checker, ("end_phrase",)),
    "change_case:capital_word_frequency": (
        _capital_word_frequency,
        ("capital_frequency", "capital_relation"),
    ),
    "change_case:english_capital": (_english_capital, ()),
    "change_case:english_lowercase": (_english_lowercase, ()),
    "punctuation:no_comma": (_no_comma, ()),
    "startend:quotation": (_quotation, ()),
}


def loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants: as is / first line / last line / both removed, x with "*"."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    variants = [response, remove_first, remove_last, remove_both]
    return variants + [v.replace("*", "") for v in variants]


# Argument kinds, for validating kwargs before any checker runs.
_INTEGER_ARGUMENTS = frozenset({
    "num_sentences", "num_paragraphs", "num_words", "nth_paragraph", "num_placeholders", "num_bullets",
    "num_highlights", "num_sections", "frequency", "let_frequency", "capital_frequency",
})  # fmt: skip
_RELATION_ARGUMENTS = frozenset({"relation", "let_relation", "capital_relation"})
_LIST_ARGUMENTS = frozenset({"keywords", "forbidden_words"})


def _checked_argument(instruction_id: str, name: str, value: Any) -> Any:
    where = f"kwargs for {instruction_id}: {name}"
    if name in _INTEGER_ARGUMENTS:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be a finite integer, got {value!r}")
        if value < 0:
            raise ValueError(f"{where} must be >= 0, got {value!r}")
        return value
    if name in _RELATION_ARGUMENTS:
        if value not in _RELATIONS:
            raise ValueError(f"{where} must be one of {_RELATIONS}, got {value!r}")
        return value
    if name in _LIST_ARGUMENTS:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where} must be a list of strings, got {value!r}")
        return list(value)
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    return value


def _instruction_arguments(instruction_id: str, kwargs: Any) -> dict:
    if instruction_id not in IFEVAL_CHECKERS:
        raise ValueError(
            f"unknown IFEval instruction id {instruction_id!r}; supported: {sorted(IFEVAL_CHECKERS)}"
        )
    if not isinstance(kwargs, dict):
        raise ValueError(f"kwargs for {instruction_id} must be a dict, got {kwargs!r}")
    arguments = {k: v for k, v in kwargs.items() if v is not None}
    expected = IFEVAL_CHECKERS[instruction_id][1]
    missing = [k for k in expected if k not in arguments]
    if missing:
        raise ValueError(f"kwargs for {instruction_id} lack {missing}; got {kwargs!r}")
    unknown = sorted(k for k in arguments if k not in expected)
    if unknown:
        # An argument the checker would ignore means the row asks for something not checked.
        raise ValueError(f"kwargs for {instruction_id} have unknown arguments {unknown}; "
                         f"it takes {list(expected) or 'none'}")
    return {k: _checked_argument(instruction_id, k, v) for k, v in arguments.items()}


def ifeval_check(
    prompt: str, response: str, instruction_id_list: list[str], kwargs: list[dict],
    *, time_limit_s: float = VERIFY_TIME_LIMIT_S,
) -> dict[str, Any]:
    """Score one IFEval response.

    Returns {"prompt_level_strict": bool, "prompt_level_loose": bool,
    "inst_level_strict": [bool per instruction], "inst_level_loose": [bool per instruction]}.
    ``prompt`` is part of the official interface (instructions may refer to it); the current
    instruction set reads the prompt to repeat from ``kwargs`` instead.

    Unknown or wrong-typed kwargs (a non-finite or negative count, an unknown relation) raise
    ValueError. Checking stops after ``time_limit_s`` seconds (only megabyte-long responses get
    near it): instructions not decided by then count as not followed, and the result gets
    ``"timed_out": True``.
    """
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    if len(instruction_id_list) != len(kwargs):
        raise ValueError(
            f"instruction_id_list has {len(instruction_id_list)} ids but kwargs has {len(kwargs)} dicts"
        )
    # Arguments are checked before any work, so a malformed row fails the same way every time.
    arguments = [_instruction_arguments(i, k) for i, k in zip(instruction_id_list, kwargs)]
    strict: list[bool] = []
    loose: list[bool] = []
    timed_out = False
    if any(i.startswith(("language:", "change_case:english")) for i in instruction_id_list):
        prepare_language_detector()  # a one-time load, not part of any response's time
    with time_bound(time_limit_s):
        try:
            variants = loose_variants(response)
            for instruction_id, instruction_arguments in zip(instruction_id_list, arguments):
                checker = IFEVAL_CHECKERS[instruction_id][0]
                strict.append(bool(response.strip()) and checker(response, instruction_arguments))
                passed = False
                for variant in variants:
                    check_deadline()
                    if variant.strip() and checker(variant, instruction_arguments):
                        passed = True
                        break
                loose.append(passed)
        except VerifierTimeout:
            timed_out = True  # unchecked instructions count as not followed
    strict += [False] * (len(arguments) - len(strict))
    loose += [False] * (len(arguments) - len(loose))
    result = {
        "prompt_level_strict": all(strict),
        "prompt_level_loose": all(loose),
        "inst_level_strict": strict,
        "inst_level_loose": loose,
    }
    if timed_out:
        result["timed_out"] = True
    return result
