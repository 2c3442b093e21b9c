"""Verifiers for Tülu 3's IFEval-style RLVR prompts (the 25 constraint functions).

A ground truth is a JSON object {"func_name": NAME, arg: value, ...}; null arguments are dropped
and the named function is called with the response and the rest. Each function returns a bool.

The semantics follow the instruction each function checks, which is not always what Ai2's
November 2024 ``if_functions.py`` did. Departures, all deliberate:

- validate_placeholders returns a bool (the old code returned a tuple, which is always truthy).
- validate_choice passes when the response contains exactly one of the options (the old code
  tested ``response in option``, backwards); containing two options ("yes. no.") fails.
- "around" for all-capital words allows the same 10% tolerance as for words (the old code
  demanded an exact count); "around" for sentences allows +-1, for words max(round(0.1 N), 1).
- Keywords, forbidden words and frequencies match whole words or phrases, case-insensitively:
  "cat" is not found in "category" (the old code used substring tests).
- Letter frequency counts the letter in either case, exactly N times.
- Word counts use IFEval's ``\\w+`` rule; sentence counts the offline splitter in ``text_split``.
- Paragraph dividers "* * *" (or "***") must stand on their own line; a leading or trailing
  divider is tolerated, an empty paragraph between two dividers is not.
- validate_paragraphs compares the first WORD of paragraph i (case-insensitive, punctuation and
  markdown stripped), not a string prefix, and ignores empty paragraphs.
- Bullet points are lines starting with "* " or "- " that have content ("* * *" and "**bold**"
  lines are not bullets). Highlights count like IFEval: non-empty *x* and **x** spans.
- A postscript is a line starting with the marker (optionally after markdown emphasis) with
  text after it. Sections are lines starting with "<splitter> <number>"; exactly N are required.
- JSON must parse as an object or array, optionally inside a ``` fence.
- Two responses: exactly one separator of exactly six asterisks, two non-empty, different parts.
- Uppercase / lowercase: at least one letter and none of the other case (English is not checked
  here; the benchmark version, ``ifeval_benchmark``, checks it as IFEval does).
- Quotation: at least two characters, wrapped in straight or curly double quotes.
- validate_end and validate_repeat_prompt compare exactly (after trimming outer whitespace;
  repeat_prompt also treats any run of whitespace as one space).
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import re
from typing import Any, Callable

from .language import detect_language
from .text_split import count_sentences, count_words, split_paragraphs, word_tokens

__all__ = ["IF_FUNCTIONS", "LANGUAGE_NAMES", "parse_ifeval_ground_truth", "verify_ifeval"]

# IFEval's language list (ISO 639-1 code -> name); names are accepted in place of codes.
LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi",
    "fr": "French", "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian",
    "bn": "Bengali", "uk": "Ukrainian", "th": "Thai", "ur": "Urdu", "ta": "Tamil", "te": "Telugu",
    "bg": "Bulgarian", "ko": "Korean", "pl": "Polish", "he": "Hebrew", "fa": "Persian",
    "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili", "kn": "Kannada", "mr": "Marathi",
    "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish",
}  # fmt: skip
_LANGUAGE_CODES_BY_NAME = {name.lower(): code for code, name in LANGUAGE_NAMES.items()}
_FINAL_TURN_MARKER = "<|assistant|>\n"

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _phrase_pattern(phrase: str) -> re.Pattern:
    """Case-insensitive whole-word match of ``phrase`` (not inside a longer word)."""
    return re.compile(r"(?<!\w)" + re.escape(phrase.strip()) + r"(?!\w)", re.IGNORECASE)


def _count_phrase(text: str, phrase: str) -> int:
    return len(_phrase_pattern(phrase).findall(text))


def _positive_int(name: str, value: Any) -> int:
    """A non-negative integer argument: an int, an integral finite float (3.0) or a digit string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"argument {name} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"argument {name} must be a finite integer, got {value!r}")
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"argument {name} must be an integer, got {value!r}") from None
    else:
        number = value
    if number < 0:
        raise ValueError(f"argument {name} must be a non-negative integer, got {value!r}")
    return number


def _compare(actual: int, target: int, quantifier: str, around_tolerance: int) -> bool:
    if not isinstance(quantifier, str):
        raise ValueError(f"argument quantifier must be a string such as 'at least', got {quantifier!r}")
    quantifier = quantifier.strip().lower()
    if quantifier == "at least":
        return actual >= target
    if quantifier == "at most":
        return actual <= target
    if quantifier == "less than":
        return actual < target
    if quantifier == "around":
        return abs(actual - target) <= around_tolerance
    raise ValueError(
        f"quantifier must be 'at least', 'around', 'at most' or 'less than', got {quantifier!r}"
    )


def _ten_percent(target: int) -> int:
    return max(round(0.1 * target), 1)


def _string_list(name: str, value: Any) -> list[str]:
    """A list of strings, also from a string holding a JSON or Python list/tuple literal."""
    if isinstance(value, str):
        parsed = None
        for parse in (json.loads, ast.literal_eval):  # literal_eval only builds literals
            try:
                parsed = parse(value)
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        value = [value] if parsed is None or isinstance(parsed, str) else parsed
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"argument {name} must be a list of strings, got {value!r}")
    return list(value)


# ---------------------------------------------------------------------------------------------
# The 25 functions (argument names as in the RLVR data)
# ---------------------------------------------------------------------------------------------


def verify_keywords(text: str, keyword_list: list[str]) -> bool:
    """Every keyword appears (whole word/phrase, any case)."""
    keywords = _string_list("keyword_list", keyword_list)
    return all(_phrase_pattern(k).search(text) for k in keywords if k.strip())


def verify_keyword_frequency(text: str, word: str, N: int) -> bool:
    """``word`` appears exactly N times (whole word/phrase, any case)."""
    return _count_phrase(text, word) == _positive_int("N", N)


def validate_forbidden_words(text: str, forbidden_words: list[str]) -> bool:
    """None of the forbidden words appears (whole word/phrase, any case)."""
    words = _string_list("forbidden_words", forbidden_words)
    return not any(_phrase_pattern(w).search(text) for w in words if w.strip())


def verify_letter_frequency(text: str, letter: str, N: int) -> bool:
    """The letter appears exactly N times, counting both cases."""
    if not isinstance(letter, str) or len(letter) != 1:
        raise ValueError(f"argument letter must be a single character, got {letter!r}")
    return text.lower().count(letter.lower()) == _positive_int("N", N)


def validate_response_language(text: str, language: str) -> bool:
    """The detected language of the whole response is ``language`` (ISO code or English name)."""
    if not isinstance(language, str) or not language.strip():
        raise ValueError(f"argument language must be a language code such as 'hi', got {language!r}")
    code = _LANGUAGE_CODES_BY_NAME.get(language.strip().lower(), language.strip().lower())
    detected = detect_language(text)
    return detected is not None and detected.split("-")[0] == code.split("-")[0]


_DIVIDER_LINE_RE = re.compile(r"^[ \t]*\*[ \t]*\*[ \t]*\*[ \t]*$", re.MULTILINE)


def verify_paragraph_count(text: str, N: int) -> bool:
    """Exactly N paragraphs separated by markdown divider lines "* * *"."""
    parts = [p.strip() for p in _DIVIDER_LINE_RE.split(text)]
    if parts and not parts[0]:
        parts = parts[1:]
    if parts and not parts[-1]:
        parts = parts[:-1]
    if not all(parts):
        return False  # an empty paragraph between two dividers
    return len(parts) == _positive_int("N", N)


def validate_word_constraint(text: str, N: int, quantifier: str) -> bool:
    """Word count at least / around (+-10%, at least 1) / at most N."""
    target = _positive_int("N", N)
    return _compare(count_words(text), target, quantifier, _ten_percent(target))


def verify_sentence_constraint(text: str, N: int, quantifier: str) -> bool:
    """Sentence count at least / around (+-1) / at most N."""
    return _compare(count_sentences(text), _positive_int("N", N), quantifier, 1)


_LEADING_MARKUP = "\"'“‘*_#([ "
_TRAILING_PUNCTUATION = ".,;:!?\"'”’*_)]"


def validate_paragraphs(text: str, N: int, first_word: str, i: int) -> bool:
    """Exactly N blank-line-separated paragraphs, and paragraph i (1-based) starts with first_word."""
    index = _positive_int("i", i)
    if index < 1:
        raise ValueError(f"argument i is 1-based and must be >= 1, got {i!r}")
    paragraphs = split_paragraphs(text)
    if len(paragraphs) != _positive_int("N", N) or index > len(paragraphs):
        return False
    first = paragraphs[index - 1].split()[0].lstrip(_LEADING_MARKUP).rstrip(_TRAILING_PUNCTUATION)
    return first.lower() == str(first_word).strip().lower()


def verify_postscript(text: str, postscript_marker: str) -> bool:
    """A line starts with the marker (e.g. "P.S.") and some text follows it."""
    marker = str(postscript_marker).strip()
    if not marker:
        raise ValueError("argument postscript_marker must be a non-empty string")
    pattern = re.compile(r"^[ \t]*[*_]*" + re.escape(marker), re.IGNORECASE | re.MULTILINE)
    last = None
    for last in pattern.finditer(text):
        pass
    return last is not None and bool(text[last.end() :].strip(" \t\n*_:.-"))


_PLACEHOLDER_RE = re.compile(r"\[([^\[\]\n]*)\]")


def validate_placeholders(text: str, N: int) -> bool:
    """At least N non-empty square-bracket placeholders such as [address]."""
    filled = [p for p in _PLACEHOLDER_RE.findall(text) if p.strip()]
    return len(filled) >= _positive_int("N", N)


_BULLET_RE = re.compile(r"^[ \t]*[*-][ \t]+(.*)$", re.MULTILINE)


def verify_bullet_points(text: str, N: int) -> bool:
    """Exactly N markdown bullet lines ("* item" or "- item")."""
    bullets = [m for m in _BULLET_RE.findall(text) if m.strip(" \t*-")]
    return len(bullets) == _positive_int("N", N)


_TITLE_RE = re.compile(r"<<([^<>\n]+)>>")


def validate_title(text: str) -> bool:
    """A non-empty title in double angular brackets, such as <<poem of joy>>."""
    return any(t.strip() for t in _TITLE_RE.findall(text))


def validate_choice(text: str, options: list[str] | str) -> bool:
    """The response contains exactly one of the options (whole phrase, any case)."""
    choices = [o for o in _string_list("options", options) if o.strip()]
    present = [o for o in choices if _phrase_pattern(o).search(text)]
    # "My answer is yes." also contains the option "yes": count only the longest ones.
    distinct = {
        o.strip().lower()
        for o in present
        if not any(o is not p and _phrase_pattern(o).search(p) and len(p) > len(o) for p in present)
    }
    return len(distinct) == 1


_SINGLE_HIGHLIGHT_RE = re.compile(r"\*[^\n*]*\*")
_DOUBLE_HIGHLIGHT_RE = re.compile(r"\*\*[^\n*]*\*\*")


def count_highlights(text: str) -> int:
    """Non-empty *highlighted* plus **highlighted** spans, counted as IFEval does."""
    single = sum(1 for h in _SINGLE_HIGHLIGHT_RE.findall(text) if h.strip("*").strip())
    double = sum(1 for h in _DOUBLE_HIGHLIGHT_RE.findall(text) if h[2:-2].strip())
    return single + double


def validate_highlighted_sections(text: str, N: int) -> bool:
    """At least N highlighted sections (*like this*)."""
    return count_highlights(text) >= _positive_int("N", N)


def validate_sections(text: str, N: int, section_splitter: str) -> bool:
    """Exactly N section headers "<splitter> <number>" at line starts (markdown marks allowed)."""
    splitter = str(section_splitter).strip()
    if not splitter:
        raise ValueError("argument section_splitter must be a non-empty string such as 'Section'")
    header = re.compile(r"^[ \t#*_]*" + re.escape(splitter) + r"[ \t]*\d+", re.MULTILINE)
    return len(header.findall(text)) == _positive_int("N", N)


_CODE_FENCE_RE = re.compile(r"^```[A-Za-z]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)


def validate_json_format(text: str) -> bool:
    """The whole response is a JSON object or array (a ``` fence around it is allowed)."""
    body = text.strip()
    fenced = _CODE_FENCE_RE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, (dict, list))


def validate_repeat_prompt(text: str, original_prompt: str) -> bool:
    """The response starts with the request, word for word."""
    prompt = " ".join(str(original_prompt).split())
    if not prompt:
        raise ValueError("argument original_prompt must be a non-empty string")
    return " ".join(text.split()).startswith(prompt)


_SIX_ASTERISKS_RE = re.compile(r"(?<!\*)\*{6}(?!\*)")


def validate_two_responses(text: str) -> bool:
    """Two different, non-empty responses separated by one line of exactly six asterisks."""
    parts = _SIX_ASTERISKS_RE.split(text)
    if len(parts) != 2:
        return False
    first, second = parts[0].strip(), parts[1].strip()
    return bool(first) and bool(second) and first != second


def validate_uppercase(text: str) -> bool:
    """Some letters, all of them capitals."""
    return text.isupper()


def validate_lowercase(text: str) -> bool:
    """Some letters, none of them capitals."""
    return text.islower()


def count_capital_words(text: str) -> int:
    """Words written entirely in capitals ("NASA", "COVID-19", "I")."""
    return sum(1 for word in word_tokens(text) if word.isupper())


def validate_frequency_capital_words(text: str, N: int, quantifier: str) -> bool:
    """All-capital word count at least / around (+-10%, at least 1) / at most N."""
    target = _positive_int("N", N)
    return _compare(count_capital_words(text), target, quantifier, _ten_percent(target))


def validate_end(text: str, end_phrase: str) -> bool:
    """The response ends with exactly ``end_phrase``."""
    phrase = str(end_phrase).strip()
    if not phrase:
        raise ValueError("argument end_phrase must be a non-empty string")
    return text.strip().endswith(phrase)


def validate_quotation(text: str) -> bool:
    """The whole response is wrapped in double quotation marks."""
    body = text.strip()
    return len(body) >= 2 and (body[0], body[-1]) in {('"', '"'), ("“", "”")}


def validate_no_commas(text: str) -> bool:
    """No commas at all (ASCII or full-width)."""
    return "," not in text and "，" not in text


IF_FUNCTIONS: dict[str, Callable[..., bool]] = {
    f.__name__: f
    for f in (
        verify_keywords, verify_keyword_frequency, validate_forbidden_words,
        verify_letter_frequency, validate_response_language, verify_paragraph_count,
        validate_word_constraint, verify_sentence_constraint, validate_paragraphs,
        verify_postscript, validate_placeholders, verify_bullet_points, validate_title,
        validate_choice, validate_highlighted_sections, validate_sections, validate_json_format,
        validate_repeat_prompt, validate_two_responses, validate_uppercase, validate_lowercase,
        validate_frequency_capital_words, validate_end, validate_quotation, validate_no_commas,
    )
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Ground truth -> call
# ---------------------------------------------------------------------------------------------


def parse_ifeval_ground_truth(ground_truth: str | dict) -> tuple[str, dict[str, Any]]:
    """(func_name, arguments without nulls) from an RLVR-IFeval ground truth (JSON or dict)."""
    if isinstance(ground_truth, str):
        try:
            constraint = json.loads(ground_truth)
        except ValueError as error:
            raise ValueError(f"ifeval ground_truth is not valid JSON ({error}): {ground_truth!r}") from None
    else:
        constraint = ground_truth
    if not isinstance(constraint, dict):
        raise ValueError(f"ifeval ground_truth must be a JSON object, got {ground_truth!r}")
    if "func_name" not in constraint:
        raise ValueError(f"ifeval ground_truth has no 'func_name' key: {ground_truth!r}")
    name = constraint["func_name"]
    if name not in IF_FUNCTIONS:
        raise ValueError(
            f"ifeval ground_truth names unknown func_name {name!r}; known: {sorted(IF_FUNCTIONS)}"
        )
    arguments = {k: v for k, v in constraint.items() if k != "func_name" and v is not None}
    return name, arguments


def verify_ifeval(response: str, ground_truth: str | dict) -> bool:
    """True if ``response`` satisfies the constraint described by the RLVR-IFeval ground truth."""
    name, arguments = parse_ifeval_ground_truth(ground_truth)
    function = IF_FUNCTIONS[name]
    parameters = list(inspect.signature(function).parameters)[1:]
    unexpected = sorted(set(arguments) - set(parameters))
    missing = [p for p in parameters if p not in arguments]
    if unexpected or missing:
        raise ValueError(
            f"ifeval {name} takes arguments {parameters}; ground truth has "
            f"{sorted(arguments)} (missing {missing}, unexpected {unexpected})"
        )
    text = response.rsplit(_FINAL_TURN_MARKER, 1)[-1].strip()
    return bool(function(text, **arguments))
