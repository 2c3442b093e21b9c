"""``verify(dataset, response, ground_truth)``: the verifiable reward of one RLVR row.

Ai2's RLVR rows carry a ``dataset`` column ("gsm8k", "MATH", "ifeval") and a ``ground_truth``
string; this routes each to its verifier. Every verifier first keeps only the text after the last
"<|assistant|>\\n" (so a decoded prompt + completion works too), as Tülu 3's code does.
"""

from __future__ import annotations

from typing import Callable

from .gsm8k import verify_gsm8k
from .ifeval_rlvr import verify_ifeval
from .language import prepare_language_detector
from .math_answer import verify_math
from .time_bound import VERIFY_TIME_LIMIT_S, VerifierTimeout, time_bound

__all__ = ["VERIFIERS", "VERIFY_MODES", "verify"]

VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "gsm8k": verify_gsm8k,
    "math": verify_math,
    "ifeval": verify_ifeval,
}


VERIFY_MODES = ("default", "tulu3")


def verify(dataset: str, response: str, ground_truth: str, mode: str = "default") -> bool:
    """True if ``response`` is correct for ``ground_truth`` under the ``dataset``'s verifier.

    dataset: "gsm8k" | "math" | "ifeval" (any case). gsm8k: the last number equals the answer;
    math: flex extraction + string/symbolic equivalence, bounded in time; ifeval: the JSON
    constraint holds. Raises ValueError for an unknown dataset or a malformed ground truth.

    In the default mode every call is bounded in time: work stops after ``VERIFY_TIME_LIMIT_S`` seconds and the answer
    is False (a rollout too long to check is not rewarded), so one call returns within a second.

    mode: "default" (the corrected verifiers above) or "tulu3": Tülu 3's November 2024 reward
    exactly, its quirks included (``tulu_lab.rewards.tulu3_compat``), to compare RLVR runs with
    Tülu's like for like.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"unknown verify mode {mode!r}; expected one of {list(VERIFY_MODES)}")
    if not isinstance(dataset, str) or dataset.strip().lower() not in VERIFIERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(VERIFIERS)} (any case)")
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    if mode == "tulu3":
        from .tulu3_compat import verify_tulu3

        return verify_tulu3(dataset, response, ground_truth)
    verifier = VERIFIERS[dataset.strip().lower()]
    if verifier is verify_ifeval and "validate_response_language" in str(ground_truth):
        prepare_language_detector()  # a one-time load, not part of any response's time
    with time_bound(VERIFY_TIME_LIMIT_S):
        try:
            return bool(verifier(response, ground_truth))
        except VerifierTimeout:
            return False
