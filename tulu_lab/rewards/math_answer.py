"""MATH verifier ("flex"): extract candidate answers, compare as strings, then symbolically.

Candidates, in Tülu 3's order: the last ``\\boxed{...}`` (or ``\\fbox{...}``, nested braces
matched); the Minerva form "Final Answer: The final answer is X. I hope it is correct."; if
neither exists, the last ``$...$`` span; if that is missing too, the whole response.

A candidate is correct if its normalised string equals the normalised ground truth (see
``normalize_math_answer``: Hendrycks' MATH normalisation plus Minerva's unit and text
stripping), or if math-verify finds the two expressions mathematically equal ("\\frac12" and
"0.5", "(x+1)^2" and "x^2+2x+1", "\\{1,2\\}" and "\\{2,1\\}").

Safety and time: model text is never evaluated. The string stage uses linear-time scans only;
the symbolic stage runs in a worker process that is killed when ``timeout_s`` (measured from
the start of the call) runs out, so every call returns within about ``timeout_s`` seconds, from
any thread, whatever the input. The worker's start-up (importing sympy) counts against that
time: call ``start_symbolic_worker(wait=True)`` before an evaluation. On a busy CPU a slow but
legitimate comparison can also run out of time and count as wrong. Candidates longer than
``MAX_SYMBOLIC_CHARS`` skip the symbolic stage (MATH answers are short; long ones are prose).

Departure from Tülu 3's code: its normaliser stripped "ft" out of "\\left" and replaced substrings
such as "a " anywhere; here units and words are removed only as whole words.
"""

from __future__ import annotations

import re
import time

from .symbolic import symbolic_equal
from .time_bound import remaining as time_left

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_SYMBOLIC_CHARS",
    "extract_math_answer",
    "last_boxed_answer",
    "math_answer_candidates",
    "minerva_answer",
    "normalize_math_answer",
    "verify_math",
]

DEFAULT_TIMEOUT_S = 3.0
MAX_SYMBOLIC_CHARS = 400
_FINAL_TURN_MARKER = "<|assistant|>\n"

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

_MINERVA_RE = re.compile(r"Final Answer: The final answer is(.*?)(?:\. I hope it is correct\.|$)", re.M)


def _matching_brace(text: str, open_index: int) -> int | None:
    """Index of the "}" closing the "{" at ``open_index``, or None if it is never closed."""
    depth = 0
    for index in range(open_index, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def last_boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (else the last ``\\fbox{...}``), braces matched.

    Also accepts the brace-less form ``\\boxed 5``. None if there is no box or it is unclosed.
    """
    command = "\\boxed"
    start = text.rfind(command)
    if start < 0:
        command = "\\fbox"
        start = text.rfind(command)
        if start < 0:
            return None
    index = start + len(command)
    while index < len(text) and text[index] in " \t":
        index += 1
    if index < len(text) and text[index] == "{":
        close = _matching_brace(text, index)
        return None if close is None else text[index + 1 : close].strip()
    if index > start + len(command):  # "\boxed 5": the token after the space, up to "$"
        token = re.match(r"[^\s$]+", text[index : index + MAX_SYMBOLIC_CHARS])
        return token.group(0) if token else None
    return None


def minerva_answer(text: str) -> str | None:
    """X from the first "Final Answer: The final answer is X. I hope it is correct." line."""
    match = _MINERVA_RE.search(text)
    if match is None:
        return None
    answer = match.group(1).strip().rstrip(".").strip()
    return answer or None


def _last_dollar_span(text: str) -> str | None:
    """Content of the last non-empty ``$...$`` span ("$$" pairs are skipped over)."""
    end = text.rfind("$")
    while end > 0:
        start = text.rfind("$", 0, end)
        if start < 0:
            return None
        inner = text[start + 1 : end].strip()
        if inner:
            return inner
        end = start
    return None


def extract_math_answer(text: str) -> str | None:
    """The answer a MATH response states: boxed, else Minerva's final-answer line, else last $...$."""
    for extract in (last_boxed_answer, minerva_answer, _last_dollar_span):
        answer = extract(text)
        if answer is not None:
            return answer
    return None


def math_answer_candidates(text: str) -> list[str]:
    """Flex candidates in order: boxed and Minerva answers; else the last $...$; else the text."""
    candidates = [a for a in (last_boxed_answer(text), minerva_answer(text)) if a is not None]
    if not candidates:
        dollar = _last_dollar_span(text)
        candidates = [dollar] if dollar is not None else [text.strip()]
    return candidates


# ---------------------------------------------------------------------------------------------
# String normalisation
# ---------------------------------------------------------------------------------------------

_UNIT_WORDS = sorted(
    """square ways integers dollars dollar mph inches inch ft hours hour km units unit points
    feet foot minutes minute seconds second digits cents cent degrees degree cm mm gm pounds
    meters meter meals edges students childrentickets multiples days years sq""".split(),
    key=len,
    reverse=True,
)
_UNITS_RE = re.compile(r"(?<![A-Za-z\\])(?:" + "|".join(_UNIT_WORDS) + r")(?![A-Za-z])(?:\^\{?[23]\}?)?")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|textnormal|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_DEGREES_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°")
_SPACING_RE = re.compile(r"\\[,;:! ]|~")
_ELLIPSIS_RE = re.compile(r"\\l?dots(?![A-Za-z])")
_AND_RE = re.compile(r"(?<![A-Za-z\\])and(?![A-Za-z])")
_REPEATED_COMMAS_RE = re.compile(r",{2,}")
_FRAC_TWO_TOKENS_RE = re.compile(r"\\frac([0-9A-Za-z])([0-9A-Za-z])")
_FRAC_FIRST_TOKEN_RE = re.compile(r"\\frac([0-9A-Za-z])\{")
_FRAC_SECOND_TOKEN_RE = re.compile(r"\\frac\{([^{}]*)\}([0-9A-Za-z])")
_SQRT_TOKEN_RE = re.compile(r"\\sqrt([0-9A-Za-z])")
_BRACED_SCRIPT_RE = re.compile(r"([\^_])\{([0-9A-Za-z])\}")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL_RE = re.compile(r"-?\d+\.\d+")
_SLASH_FRACTION_RE = re.compile(r"(-?\d+)/(\d+)")


def _unwrap_box(answer: str) -> str:
    """"\\boxed{X}" -> "X" when one box is the whole answer."""
    for command in ("\\boxed", "\\fbox"):
        if answer.startswith(command + "{") and _matching_brace(answer, len(command)) == len(answer) - 1:
            return answer[len(command) + 1 : -1].strip()
    return answer


def _remove_right_units(answer: str) -> str:
    # Hendrycks: "\text{ " (with a space) only ever introduces units, as in "5\text{ cm}".
    head, marker, tail = answer.partition("\\text{ ")
    if marker and head.strip() and not any(c.isdigit() for c in tail):
        return head
    return answer


def normalize_math_answer(answer: str) -> str:
    """Canonical string form of a MATH answer, for exact comparison.

    \\dfrac/\\tfrac -> \\frac; \\left, \\right, $, \\!, thin spaces, degrees, percent signs,
    \\text{...} wrappers, unit words and all whitespace dropped; "k = 5" -> "5" (short left side);
    \\frac12 -> \\frac{1}{2}, \\sqrt2 -> \\sqrt{2}, x^{2} -> x^2; ".5" -> "0.5";
    "1,000" -> "1000"; "18.0" -> "18"; "0.5" -> \\frac{1}{2}; "3/4" -> \\frac{3}{4}.
    """
    s = _unwrap_box(answer.strip())
    s = s.replace("\n", " ").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _DEGREES_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "").replace("%", "")
    for _ in range(3):  # \text{\textbf{x}} needs one pass per level
        s = _TEXT_RE.sub(r"\1", s)
    s = _UNITS_RE.sub("", s)
    s = _SPACING_RE.sub("", s)
    s = _ELLIPSIS_RE.sub("", s)
    s = _AND_RE.sub(",", s)
    s = _REPEATED_COMMAS_RE.sub(",", "".join(s.split()))
    if s.count("=") == 1:
        left, right = s.split("=")
        if len(left) <= 2:
            s = right
    s = _SQRT_TOKEN_RE.sub(r"\\sqrt{\1}", s)
    s = _FRAC_TWO_TOKENS_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_FIRST_TOKEN_RE.sub(r"\\frac{\1}{", s)
    s = _FRAC_SECOND_TOKEN_RE.sub(r"\\frac{\1}{\2}", s)
    s = _BRACED_SCRIPT_RE.sub(r"\1\2", s)
    s = s.replace("{.", "{0.").replace("(.", "(0.").replace(",.", ",0.")
    if s.startswith("."):
        s = "0" + s
    elif s.startswith("-."):
        s = "-0" + s[1:]
    s = s.rstrip(".")
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if _DECIMAL_RE.fullmatch(s):
        s = s.rstrip("0").rstrip(".")
    if s == "0.5":
        s = "\\frac{1}{2}"
    fraction = _SLASH_FRACTION_RE.fullmatch(s)
    if fraction:
        s = f"\\frac{{{fraction.group(1)}}}{{{fraction.group(2)}}}"
    return s


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def _gold_answer(ground_truth: str) -> str:
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(f"math ground_truth must be a non-empty answer string, got {ground_truth!r}")
    boxed = last_boxed_answer(ground_truth) if "\\boxed" in ground_truth else None
    return boxed if boxed else ground_truth.strip()


def verify_math(response: str, ground_truth: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True if a flex candidate of ``response`` equals the MATH answer ``ground_truth``.

    ``ground_truth`` is the answer ("\\frac{1}{2}") or a solution containing ``\\boxed{...}``.
    Returns within about ``timeout_s`` seconds; an answer that cannot be decided in time is False.
    """
    started = time.monotonic()
    gold = _gold_answer(ground_truth)
    text = response.rsplit(_FINAL_TURN_MARKER, 1)[-1]
    candidates = math_answer_candidates(text)
    gold_normal = normalize_math_answer(gold)
    for candidate in candidates:
        if candidate == gold or normalize_math_answer(candidate) == gold_normal:
            return True
    if len(gold) > MAX_SYMBOLIC_CHARS:
        return False
    whole_text = text.strip()
    symbolic_inputs = [
        # An extracted answer is LaTeX math: wrap it so math-verify reads it as such. The whole
        # response is passed as is, for math-verify to find the expression in.
        c if c == whole_text else "$" + c.strip().strip("$") + "$"
        for c in candidates
        if 0 < len(c) <= MAX_SYMBOLIC_CHARS
    ]
    remaining = timeout_s - (time.monotonic() - started)
    enclosing = time_left()  # inside verify(): its one-second bound covers the symbolic stage too
    if enclosing is not None:
        remaining = min(remaining, enclosing)
    if not symbolic_inputs or remaining <= 0:
        return False
    return symbolic_equal("$" + gold.strip("$") + "$", symbolic_inputs, remaining)
