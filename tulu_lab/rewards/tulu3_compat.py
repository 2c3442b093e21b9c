"""Tülu 3's verifiable reward as it ran in November 2024, quirks included: ``verify(..., mode="tulu3")``.

The workbench's default verifiers (gsm8k.py, math_answer.py, ifeval_rlvr.py) correct several
behaviours of open-instruct's ``ground_truth_utils.py`` / ``if_functions.py`` / ``math_utils.py``
(commit 9c2d44bec, the Tülu 3 release). This module reproduces the reward Tülu 3 actually optimised,
so an RLVR result can be compared like for like. Known behaviours, each tested against the default:

* gsm8k: the last match of ``[-+]?\\d*\\.\\d+|\\d+`` after dropping thousands commas, compared as a
  STRING with the ground truth: "-5" is read as "5" (the sign only survives on decimals) and "18.0"
  does not equal "18". No number at all: the whole response is compared.
* math: candidates are the last ``\\boxed{...}`` (``\\fbox`` is found, then dropped: its prefix is not
  "\\boxed{"), the Minerva "Final Answer: The final answer is X. I hope it is correct." (normalised),
  else the text between the last two "$", else the whole response (normalised). A candidate matches
  when sympy's ``parse_latex`` of both sides has a difference that ``simplify``s to 0 (5 s bound) or
  when the Hendrycks normalisations are equal strings. No math-verify.
* ifeval: the text after the last "<|assistant|>\\n", stripped, is checked by the 25 functions with
  their original semantics: keywords and forbidden words as case-insensitive SUBSTRINGS; keyword
  frequency over ``\\b\\w+\\b`` tokens; ``validate_placeholders`` returns a (bool, list) tuple, which the
  reward treats as true whatever the count; ``validate_choice`` accepts a response that is a substring
  of some option (the test is reversed: "yes" passes for options ["yes, definitely", ...], a full
  sentence containing an option fails); capital words "around N" means exactly N; bullet lines are
  any line starting with "*" or "-"; a title may be empty ("<<>>"); a lone '"' is a quotation; ...

Where this cannot be exact:
* Tülu's ``parse_latex`` ran sympy's ANTLR backend (antlr4 4.11). math-verify here needs antlr4 4.13,
  which sympy's ANTLR backend refuses, so sympy's Lark backend parses instead when ANTLR is not
  usable; the two backends accept slightly different LaTeX.
* ``validate_response_language`` uses langdetect as Tülu did, seeded (langdetect is random on short
  texts); text it cannot classify is False here (Tülu's run would have raised).
* The 5 s bound on the symbolic check is SIGALRM in the main thread, as Tülu's; in another thread the
  check runs in a forked child that is killed at the deadline.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Callable

__all__ = ["TULU3_IF_FUNCTIONS", "verify_tulu3", "verify_gsm8k_tulu3", "verify_ifeval_tulu3", "verify_math_tulu3"]

_FINAL_TURN = "<|assistant|>\n"
SYMBOLIC_TIMEOUT_S = 5


def _final_turn(text: str) -> str:
    return text.split(_FINAL_TURN)[-1].strip()


# ---------------------------------------------------------------------------------------------
# gsm8k
# ---------------------------------------------------------------------------------------------

_THOUSANDS = re.compile(r"(\d),(\d)")
_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


def verify_gsm8k_tulu3(response: str, ground_truth: str) -> bool:
    """The last number (minus sign kept only on decimals) equals ``ground_truth`` as a string."""
    text = _THOUSANDS.sub(r"\1\2", _final_turn(response))
    numbers = _NUMBER.findall(text)
    prediction = numbers[-1] if numbers else text
    return str(prediction).lower() == str(ground_truth).lower()


# ---------------------------------------------------------------------------------------------
# math: extraction, Minerva and Hendrycks normalisation, sympy equivalence
# ---------------------------------------------------------------------------------------------


def _last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` / ``\\fbox{...}`` with its command; "\\boxed X" up to the next "$"."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start:position + 1]
    return None


def _unbox(boxed: str) -> str | None:
    """The inside of "\\boxed{...}" or the rest of "\\boxed X"; None for anything else (\\fbox)."""
    if "\\boxed " in boxed:
        return boxed[len("\\boxed "):] if boxed.startswith("\\boxed ") else None
    if boxed.startswith("\\boxed{") and boxed.endswith("}"):
        return boxed[len("\\boxed{"):-1]
    return None


_INVALID = "[invalidanswer]"
_MINERVA = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")


def _minerva_raw(text: str) -> str:
    found = _MINERVA.search(text + "I hope it is correct.")
    return found.group(1).strip() if found else _INVALID


# Lewkowycz et al. (2022), appendix D: replacements, then expressions deleted, in this order
_MINERVA_REPLACE = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
_MINERVA_DELETE = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
                   "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
                   "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
                   "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
                   "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots"]


def _minerva_normalise(answer: str) -> str:
    answer = answer.split("=")[-1]
    for before, after in _MINERVA_REPLACE:
        answer = answer.replace(before, after)
    for expression in _MINERVA_DELETE:
        answer = answer.replace(expression, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for command in ("text", "textbf", "overline"):
        answer = re.sub(r"(\\" + command + r"\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def _math_candidates(response: str) -> list[str]:
    text = _final_turn(response)
    candidates = []
    boxed = _last_boxed(text)
    inside = _unbox(boxed) if boxed is not None else None
    if inside is not None:
        candidates.append(inside)
    minerva = _minerva_normalise(_minerva_raw(text))
    if minerva != _INVALID:
        candidates.append(minerva)
    if not candidates:
        dollars = [m.start() for m in re.finditer(r"\$", text)]
        if len(dollars) > 1:
            candidates.append(_minerva_normalise(text[dollars[-2] + 1:dollars[-1]]))
    if not candidates:
        candidates.append(_minerva_normalise(text))
    return candidates


class _Unequal(Exception):
    """A Hendrycks normalisation step that gives up (open-instruct then compares the raw strings)."""


def _fix_fracs(text: str) -> str:
    pieces = text.split("\\frac")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\frac"
        if not piece:  # "\\frac" at the very end: open-instruct's indexing failed here
            raise _Unequal
        if piece[0] == "{":
            out += piece
            continue
        if len(piece) < 2:
            return text
        a, b, rest = piece[0], piece[1], piece[2:]
        out += "{" + a + "}" + ("{" + b + "}" + rest if b != "{" else b + rest)
    return out


def _fix_a_slash_b(text: str) -> str:
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        raise _Unequal from None
    if text != f"{a}/{b}":
        return text
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _fix_sqrt(text: str) -> str:
    if "\\sqrt" not in text:
        return text
    pieces = text.split("\\sqrt")
    out = pieces[0]
    for piece in pieces[1:]:
        if not piece:
            raise _Unequal
        out += "\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:])
    return out


def _hendrycks_strip(text: str) -> str:
    for before, after in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                          ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        text = text.replace(before, after)
    if "\\text{ " in text:  # units on the right; more than one such span makes the check give up
        units = text.split("\\text{ ")
        if len(units) != 2:
            raise _Unequal
        text = units[0]
    text = text.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _fix_sqrt(text).replace(" ", "")
    text = _fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _fix_a_slash_b(text)


def _hendrycks_equal(a: str, b: str) -> bool:
    try:
        return _hendrycks_strip(a) == _hendrycks_strip(b)
    except (_Unequal, IndexError):
        return a == b


def _parse_latex(text: str):
    from sympy.parsing.latex import parse_latex

    try:
        return parse_latex(text)
    except ImportError:  # no antlr4 4.11 here: sympy's Lark grammar instead
        return parse_latex(text, backend="lark")


def _sympy_difference_is_zero(a: str, b: str) -> bool:
    import sympy

    try:
        return sympy.simplify(_parse_latex(a) - _parse_latex(b)) == 0
    except Exception:  # noqa: BLE001 - open-instruct counted any failure as "not equal"
        return False


def _bounded(check: Callable[[], bool], seconds: int) -> bool:
    """``check()`` within ``seconds``, else False: SIGALRM in the main thread, a forked child elsewhere."""
    import signal

    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM"):
        def expire(signum, frame):
            raise TimeoutError

        previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(seconds)
        try:
            return check()
        except TimeoutError:
            return False
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child():
        sender.send(bool(check()))

    process = context.Process(target=child, daemon=True)
    process.start()
    answer = receiver.recv() if receiver.poll(seconds) else False
    if process.is_alive():
        process.kill()
    process.join()
    return answer


def verify_math_tulu3(response: str, ground_truth: str) -> bool:
    """Any candidate equals ``ground_truth`` by sympy (5 s bound) or by Hendrycks normalisation."""
    for candidate in _math_candidates(response):
        if _bounded(lambda c=candidate: _sympy_difference_is_zero(c, ground_truth), SYMBOLIC_TIMEOUT_S):
            return True
        if _hendrycks_equal(candidate, ground_truth):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# ifeval: the 25 functions with their November 2024 semantics
# ---------------------------------------------------------------------------------------------


def _keywords(text: str, keyword_list: list) -> bool:
    lower = text.lower()
    return all(k.lower() in lower for k in keyword_list)


def _keyword_frequency(text: str, word: str, N: int) -> bool:
    target = word.lower()
    return sum(1 for w in re.findall(r"\b\w+\b", text.lower()) if w == target) == N


def _forbidden_words(text: str, forbidden_words: list) -> bool:
    lower = text.lower()
    return not any(w.lower() in lower for w in forbidden_words)


def _letter_frequency(text: str, letter: str, N: int) -> bool:
    if len(letter) != 1:
        raise ValueError(f"verify_letter_frequency: letter must be one character, got {letter!r}")
    return text.count(letter) == N


def _response_language(text: str, language: str) -> bool:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        return detect(text) == language
    except LangDetectException:
        return False


def _paragraph_count(text: str, N: int) -> bool:
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    paragraphs = cleaned.split("* * *")
    return all(p.strip() for p in paragraphs) and len(paragraphs) == N


def _quantified(actual: int, N: int, quantifier: str, around: int) -> bool:
    if quantifier == "at least":
        return actual >= N
    if quantifier == "at most":
        return actual <= N
    if quantifier == "around":
        return abs(actual - N) <= around
    return False


def _word_constraint(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(text.strip().split()), N, quantifier, max(round(N * 0.1), 1))


_SENTENCE_BREAK = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s")


def _sentence_constraint(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(_SENTENCE_BREAK.split(text)), N, quantifier, 1)


def _paragraphs(text: str, N: int, first_word: str, i: int) -> bool:
    paragraphs = text.split("\n\n")
    return len(paragraphs) == N and paragraphs[i - 1].strip().startswith(first_word)


def _postscript(text: str, postscript_marker: str) -> bool:
    if postscript_marker not in text:
        return False
    return len(text[text.find(postscript_marker):].strip()) > len(postscript_marker)


def _placeholders(text: str, N: int) -> tuple[bool, list[str]]:
    found = re.findall(r"\[(.*?)\]", text)
    return len(found) >= N, found  # a non-empty tuple: the reward reads it as true


def _bullet_points(text: str, N: int) -> bool:
    return sum(1 for line in text.split("\n") if line.strip().startswith(("*", "-"))) == N


def _title(text: str) -> bool:
    return len(re.findall(r"<<(.*?)>>", text)) > 0


def _choice(text: str, options: list) -> bool:
    return any(text in option for option in options)  # the response inside an option, not the reverse


def _highlighted_sections(text: str, N: int) -> bool:
    return len(re.findall(r"\*(.*?)\*", text)) >= N


def _sections(text: str, N: int, section_splitter: str) -> bool:
    sections = text.split(section_splitter)
    if sections[0] == "":
        sections = sections[1:]
    return len(sections) == N


def _json_format(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _two_responses(text: str) -> bool:
    if text.count("******") != 1:
        return False
    first, second = text.split("******")
    return first.strip() != second.strip()


def _capital_words(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(re.findall(r"\b[A-Z]+\b", text)), N, quantifier, 0)  # "around" = exactly N


TULU3_IF_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "verify_keywords": _keywords,
    "verify_keyword_frequency": _keyword_frequency,
    "validate_forbidden_words": _forbidden_words,
    "verify_letter_frequency": _letter_frequency,
    "validate_response_language": _response_language,
    "verify_paragraph_count": _paragraph_count,
    "validate_word_constraint": _word_constraint,
    "verify_sentence_constraint": _sentence_constraint,
    "validate_paragraphs": _paragraphs,
    "verify_postscript": _postscript,
    "validate_placeholders": _placeholders,
    "verify_bullet_points": _bullet_points,
    "validate_title": _title,
    "validate_choice": _choice,
    "validate_highlighted_sections": _highlighted_sections,
    "validate_sections": _sections,
    "validate_json_format": _json_format,
    "validate_repeat_prompt": lambda text, original_prompt: text.startswith(original_prompt),
    "validate_two_responses": _two_responses,
    "validate_uppercase": lambda text: text == text.upper(),
    "validate_lowercase": lambda text: text == text.lower(),
    "validate_frequency_capital_words": _capital_words,
    "validate_end": lambda text, end_phrase: text.endswith(end_phrase),
    "validate_quotation": lambda text: text.startswith('"') and text.endswith('"'),
    "validate_no_commas": lambda text: "," not in text,
}


def verify_ifeval_tulu3(response: str, ground_truth: str | dict) -> bool:
    """The constraint's function on the final turn; its result read as the reward did (truthiness)."""
    constraint = json.loads(ground_truth) if isinstance(ground_truth, str) else dict(ground_truth)
    if not isinstance(constraint, dict) or "func_name" not in constraint:
        return False  # open-instruct printed a warning and gave no reward
    name = constraint.pop("func_name")
    if name not in TULU3_IF_FUNCTIONS:
        raise ValueError(f"ifeval ground_truth names unknown func_name {name!r}; known: {sorted(TULU3_IF_FUNCTIONS)}")
    arguments = {k: v for k, v in constraint.items() if v is not None}
    return bool(TULU3_IF_FUNCTIONS[name](_final_turn(response), **arguments))


_BY_DATASET = {"gsm8k": verify_gsm8k_tulu3, "math": verify_math_tulu3, "ifeval": verify_ifeval_tulu3}


def verify_tulu3(dataset: str, response: str, ground_truth: str) -> bool:
    """Tülu 3's reward decision for one row (``dataset`` already checked by the caller)."""
    if ground_truth is None:
        return False
    return _BY_DATASET[dataset.strip().lower()](response, ground_truth)
