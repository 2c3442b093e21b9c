"""Throughput of the verifiable rewards: verify() calls per second on one core.

    python benchmarks/verifier_throughput.py [--gsm8k test.jsonl] [--math test.jsonl] [--seconds 3]

GSM8K responses are the reference solutions with "The answer is N." appended (half of them
scored against the wrong answer), or synthetic chain-of-thought responses when no file is given.
MATH is measured twice: answers settled by the string stage, and answers that need the symbolic
worker (sympy through math-verify). IFEval runs a mix of the 25 RLVR constraint functions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

from tulu_lab.rewards import start_symbolic_worker, verify


def gsm8k_cases(path: Path | None, rng: random.Random) -> list[tuple[str, str]]:
    if path is not None:
        rows = [json.loads(line) for line in path.open()]
        solutions = [(r["answer"].split("####")[0], r["answer"].split("####")[-1].strip()) for r in rows]
    else:
        solutions = []
        for _ in range(500):
            a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
            text = (f"Tom has {a} apples and buys {b} more, so he has {a} + {b} = {a + b} apples.\n"
                    f"He gives away 1/{c} of them, which is {a + b} / {c} = {(a + b) / c:.2f}.\n")
            solutions.append((text, str(a + b)))  # fmt: skip
    cases = []
    for index, (reasoning, answer) in enumerate(solutions):
        truth = answer if index % 2 == 0 else str(int(answer.replace(",", "")) + 1)
        cases.append((f"{reasoning}The answer is {answer}.", truth))
    return cases


def math_cases(path: Path | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    answers = [json.loads(line)["answer"] for line in path.open()] if path else ["\\frac{1}{2}", "3", "(1,2)", "\\sqrt{2}"]
    string_stage = [(f"So the answer is $\\boxed{{{a}}}$.", a) for a in answers]
    symbolic_stage = [("so $\\boxed{(x+1)^2}$", "x^2+2x+1"), ("$\\boxed{\\sqrt{8}}$", "2\\sqrt{2}"),
                      ("$\\boxed{3}$", "4"), ("$\\boxed{\\{2,1\\}}$", "\\{1,2\\}")]  # fmt: skip
    return string_stage, symbolic_stage


IFEVAL_CASES = [
    ("here is an answer in lower case only.", {"func_name": "validate_lowercase"}),
    ("One, two.", {"func_name": "validate_no_commas"}),
    ("* a\n* b\n* c", {"func_name": "verify_bullet_points", "N": 3}),
    ("First. Second. Third.", {"func_name": "verify_sentence_constraint", "N": 3, "quantifier": "at least"}),
    ("word " * 120, {"func_name": "validate_word_constraint", "N": 100, "quantifier": "around"}),
    ("Hi.\n\nP.S. bye", {"func_name": "verify_postscript", "postscript_marker": "P.S."}),
    ('{"a": [1, 2, 3]}', {"func_name": "validate_json_format"}),
]


def rate(dataset: str, cases: list[tuple[str, str]], seconds: float) -> str:
    """verify() calls per wall-clock second and per CPU second, cycling through ``cases``.

    The CPU-time rate is what one dedicated core would do; the wall-clock rate drops when other
    programs share the CPU. For MATH's symbolic stage the work happens in the worker process, so
    only the wall-clock rate is meaningful there.
    """
    calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
    for response, truth in itertools.cycle(cases):
        verify(dataset, response, truth)
        calls += 1
        if calls % 50 == 0 and time.perf_counter() - started >= seconds:
            break
    wall = calls / (time.perf_counter() - started)
    cpu = calls / max(time.process_time() - cpu_started, 1e-9)
    return f"{wall:10,.0f} calls/s wall clock, {cpu:10,.0f} per CPU second"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gsm8k", type=Path, help="GSM8K jsonl (question/answer) for realistic responses")
    parser.add_argument("--math", type=Path, help="MATH-500 jsonl (problem/solution/answer)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()

    rng = random.Random(0)
    gsm8k = gsm8k_cases(args.gsm8k, rng)
    string_stage, symbolic_stage = math_cases(args.math)
    ifeval = [(text, json.dumps(truth)) for text, truth in IFEVAL_CASES]
    start_symbolic_worker(wait=True)

    mean_chars = sum(len(r) for r, _ in gsm8k) / len(gsm8k)
    print(f"gsm8k  (responses of {mean_chars:.0f} chars on average): {rate('gsm8k', gsm8k, args.seconds)}")
    print(f"math   (string stage, boxed answers)              : {rate('math', string_stage, args.seconds)}")
    print(f"math   (symbolic stage, sympy in the worker)      : {rate('math', symbolic_stage, args.seconds)}")
    print(f"ifeval (mix of constraint functions)              : {rate('ifeval', ifeval, args.seconds)}")


if __name__ == "__main__":
    main()
