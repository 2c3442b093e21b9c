"""Verifiable rewards: pure ``str -> bool`` verifiers for GSM8K, MATH and IFEval.

    verify(dataset, response, ground_truth) -> bool          RLVR rows ("gsm8k" | "math" | "ifeval")
    ifeval_check(prompt, response, instruction_id_list, kwargs) -> dict    the IFEval benchmark
    make_verifiable_reward(correct=10.0) -> TRL reward function

Modules: gsm8k (last number), math_answer (flex extraction, normalisation; symbolic check in a
killable worker, ``symbolic``), ifeval_rlvr (Tülu's 25 constraint functions), ifeval_benchmark
(Google IFEval scoring), text_split and language (offline text helpers), trl_rewards.
"""

from .dispatch import VERIFIERS, verify
from .gsm8k import extract_gsm8k_answer, gsm8k_gold_answer, verify_gsm8k
from .ifeval_benchmark import IFEVAL_CHECKERS, ifeval_check
from .ifeval_rlvr import IF_FUNCTIONS, verify_ifeval
from .math_answer import extract_math_answer, math_answer_candidates, normalize_math_answer, verify_math
from .symbolic import start_symbolic_worker
from .trl_rewards import completion_text, make_verifiable_reward, verifiable_reward

__all__ = [
    "IFEVAL_CHECKERS",
    "IF_FUNCTIONS",
    "VERIFIERS",
    "completion_text",
    "extract_gsm8k_answer",
    "extract_math_answer",
    "gsm8k_gold_answer",
    "ifeval_check",
    "make_verifiable_reward",
    "math_answer_candidates",
    "normalize_math_answer",
    "start_symbolic_worker",
    "verifiable_reward",
    "verify",
    "verify_gsm8k",
    "verify_ifeval",
    "verify_math",
]
