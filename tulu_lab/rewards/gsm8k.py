"""GSM8K verifier: the last number in the response, compared numerically with the answer.

Tülu 3's RLVR reward takes the last number of the response after dropping thousands commas and
compares it with the text after "####" in the GSM8K solution. This version departs from the
November 2024 code in the two places where that code was wrong:

- the sign is kept: "-5" stays -5 (the old pattern dropped the minus sign);
- numbers are compared as numbers: "18.0" equals "18" (the old code compared strings).

A minus sign counts only where it cannot be subtraction: "10-5" ends in the number 5, "x = -5" in
-5. Dollar signs are dropped ("$1,000" -> 1000). Commas are removed only inside a correctly
grouped number ("1,000,000"), so "1,2,3" is a list whose last number is 3.

``extract_gsm8k_answer`` also offers lm-evaluation-harness's "strict" extraction (the number after
"#### "), which the evaluation reports next to the flexible one.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal

__all__ = ["extract_gsm8k_answer", "gsm8k_gold_answer", "verify_gsm8k"]

# One number: optional sign (only where it cannot be binary minus), optional "$", then digits with
# correctly grouped thousands commas or plain digits, an optional decimal part; or ".5".
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}])(?P<sign>[-−]))?\$?"
    r"(?P<number>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|(?<!\d)\.\d+)"
)
# lm-evaluation-harness gsm8k "strict-match" filter.
_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
_PLAIN_NUMBER_RE = re.compile(r"[-−+]?(?:\d+(?:\.\d*)?|\.\d+)")
_NUMBER_RUN_RE = re.compile(r"[0-9,.$\-−]*")
_FINAL_TURN_MARKER = "<|assistant|>\n"


def _number_text(match: re.Match) -> str:
    sign = "-" if match.group("sign") else ""
    return sign + match.group("number").replace(",", "")


def _last_number_run_start(text: str) -> int:
    """Where the scan for the last number can start: the beginning of the run of number characters
    (digits , . $ - −) around the last digit; len(text) when there is no digit.

    A number is made of those characters only, so no match of the full scan crosses into that run
    from before it: the scan from here finds the same last number, without reading megabytes of
    text before it.
    """
    last_digit = max(text.rfind(d) for d in "0123456789")
    if last_digit < 0:
        return len(text)
    reversed_head = text[last_digit::-1]
    return last_digit + 1 - _NUMBER_RUN_RE.match(reversed_head).end()


def extract_gsm8k_answer(text: str, mode: str = "flexible") -> str | None:
    """The answer a GSM8K response gives, as a plain number string, or None if there is none.

    mode="flexible": the last number in the text ("-5", "1000", "3.5"; commas and "$" dropped).
    mode="strict": the number after the first "#### " (lm-evaluation-harness "strict-match"),
    with commas and a trailing period removed.
    """
    if mode == "flexible":
        last = None
        for last in _NUMBER_RE.finditer(text, _last_number_run_start(text)):
            pass
        return None if last is None else _number_text(last)
    if mode == "strict":
        match = _STRICT_RE.search(text)
        if match is None:
            return None
        answer = match.group(1).replace(",", "").rstrip(".")
        return answer or None
    raise ValueError(f"mode must be 'flexible' or 'strict', got {mode!r}")


@functools.lru_cache(maxsize=65536)
def gsm8k_gold_answer(ground_truth: str) -> Decimal:
    """The numeric answer of a GSM8K ground truth: a number, or a solution ending in "#### N"."""
    if isinstance(ground_truth, (int, float)) and not isinstance(ground_truth, bool):
        ground_truth = str(ground_truth)
    if not isinstance(ground_truth, str):
        raise ValueError(f"gsm8k ground_truth must be a string, got {type(ground_truth).__name__}")
    text = ground_truth.rsplit("####", 1)[-1] if "####" in ground_truth else ground_truth
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if not _PLAIN_NUMBER_RE.fullmatch(cleaned):
        raise ValueError(
            f"gsm8k ground_truth must be a number or a solution ending in '#### <number>', "
            f"got {ground_truth!r}"
        )
    return Decimal(cleaned.replace("−", "-"))


def verify_gsm8k(response: str, ground_truth: str) -> bool:
    """True if the last number in ``response`` equals the GSM8K answer (numerically)."""
    gold = gsm8k_gold_answer(ground_truth)
    answer = extract_gsm8k_answer(response.rsplit(_FINAL_TURN_MARKER, 1)[-1])
    return answer is not None and Decimal(answer) == gold
