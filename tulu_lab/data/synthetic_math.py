r"""Synthetic MATH-style problems with ``\boxed{}`` answers, for the embedded default model.

Simple algebra and arithmetic a small model can learn: linear equations, adding/subtracting
fractions, gcd, lcm, order of operations and percentages. Solutions are written like the Minerva
exemplars (see :mod:`tulu_lab.data.fewshot`): worked lines, the answer in ``\boxed{}``, and a closing
"Final Answer: The final answer is $X$. I hope it is correct.". Answers are exact: integers or
reduced fractions in LaTeX (``\frac{3}{4}``, ``-\frac{1}{6}``).

Seeded by ``random.Random(seed)``; DEFAULT number range 2..20 (``low=2, high=20``).
Each problem has a ``key`` = (kind, numbers) and an ``id`` hashed from it; generation skips repeats.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable

MATH_INSTRUCTION = "\nPut your final answer within \\boxed{}."
MATH_DATASET = "math"  # the verifier name in RLVR rows


@dataclass(frozen=True)
class MathProblem:
    """One synthetic MATH-style problem; ``answer`` is the LaTeX inside the final ``\\boxed{}``."""

    id: str
    kind: str
    problem: str
    solution: str
    answer: str
    key: tuple


def latex_number(value: Fraction | int) -> str:
    r"""An exact number in MATH's answer style: "7", "-3", "\frac{3}{4}", "-\frac{1}{6}"."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _signed_term(value: int) -> str:
    return f"+ {value}" if value >= 0 else f"- {-value}"


def _finish(lines: list[str], answer: str) -> str:
    return "\n".join(lines + [f"Final Answer: The final answer is ${answer}$. I hope it is correct."])


def _linear(rng: random.Random, low: int, high: int) -> tuple[tuple, str, list[str], str]:
    a = rng.randint(max(2, low), max(2, high))
    x = rng.randint(low, high) * rng.choice((1, 1, -1))
    b = rng.randint(low, high) * rng.choice((1, -1))
    c = a * x + b
    problem = f"Solve for $x$: ${a}x {_signed_term(b)} = {c}$."
    move = f"Subtracting {b} from" if b > 0 else f"Adding {-b} to"
    lines = [f"{move} both sides gives ${a}x = {c - b}$.",
             f"Dividing both sides by {a} gives $x = \\frac{{{c - b}}}{{{a}}} = \\boxed{{{x}}}$."]
    return (a, b, c), problem, lines, str(x)


def _fraction_sum(rng: random.Random, low: int, high: int) -> tuple[tuple, str, list[str], str]:
    top = max(3, min(high, 12))  # denominators past 12 make unwieldy common denominators
    q, s = rng.randint(2, top), rng.randint(2, top)
    p, r = rng.randint(1, q - 1), rng.randint(1, s - 1)
    sign = rng.choice(("+", "-"))
    first, second = Fraction(p, q), Fraction(r, s)
    total = first + second if sign == "+" else first - second
    common = q * s // math.gcd(q, s)
    p2, r2 = p * common // q, r * common // s
    unreduced = p2 + r2 if sign == "+" else p2 - r2
    problem = (f"Compute $\\frac{{{p}}}{{{q}}} {sign} \\frac{{{r}}}{{{s}}}$. "
               f"Express your answer in simplest form.")
    lines = [f"The least common denominator of {q} and {s} is {common}.",
             f"So $\\frac{{{p}}}{{{q}}} {sign} \\frac{{{r}}}{{{s}}} = \\frac{{{p2}}}{{{common}}} {sign} "
             f"\\frac{{{r2}}}{{{common}}} = \\frac{{{unreduced}}}{{{common}}}$."]
    answer = latex_number(total)
    lines.append(f"In simplest form this is $\\boxed{{{answer}}}$.")
    return (p, q, sign, r, s), problem, lines, answer


def _euclid_lines(m: int, n: int) -> tuple[list[str], int]:
    big, small = max(m, n), min(m, n)
    lines = []
    while small:
        quotient, remainder = divmod(big, small)
        lines.append(f"${big} = {quotient} \\cdot {small} + {remainder}$")
        big, small = small, remainder
    return lines, big


def _gcd(rng: random.Random, low: int, high: int) -> tuple[tuple, str, list[str], str]:
    g = rng.randint(low, high)
    u, v = rng.sample(range(1, max(3, high // 2) + 1), 2)
    m, n = g * u, g * v
    steps, divisor = _euclid_lines(m, n)
    problem = f"What is the greatest common divisor of ${m}$ and ${n}$?"
    lines = ["Using the Euclidean algorithm:"] + steps + [f"So $\\gcd({m}, {n}) = \\boxed{{{divisor}}}$."]
    return (m, n), problem, lines, str(divisor)


def _lcm(rng: random.Random, low: int, high: int) -> tuple[tuple, str, list[str], str]:
    first = max(2, low)
    m, n = rng.sample(range(first, max(first + 2, high + 1)), 2)
    divisor = math.gcd(m, n)
    multiple = m * n // divisor
    problem = f"What is the least common multiple of ${m}$ and ${n}$?"
    lines = [f"The greatest common divisor of {m} and {n} is {divisor}.",
             f"So $\\operatorname{{lcm}}({m}, {n}) = \\frac{{{m} \\cdot {n}}}{{{divisor}}} = "
             f"\\frac{{{m * n}}}{{{divisor}}} = \\boxed{{{multiple}}}$."]
    return (m, n), problem, lines, str(multiple)


def _order_of_operations(rng: random.Random, low: int, high: int) -> tuple[tuple, str, list[str], str]:
    a, b, c, d = (rng.randint(low, high) for _ in range(4))
    form = rng.randrange(3)
    if form == 0:
        expression, value = f"{a} \\cdot ({b} + {c}) - {d}", a * (b + c) - d
        lines = [f"First the parentheses: ${b} + {c} = {b + c}$.",
                 f"Then the product: ${a} \\cdot {b + c} = {a * (b + c)}$.",
                 f"Finally ${a * (b + c)} - {d} = \\boxed{{{value}}}$."]
    elif form == 1:
        expression, value = f"({a} + {b}) \\cdot {c} + {d}", (a + b) * c + d
        lines = [f"First the parentheses: ${a} + {b} = {a + b}$.",
                 f"Then the product: ${a + b} \\cdot {c} = {(a + b) * c}$.",
                 f"Finally ${(a + b) * c} + {d} = \\boxed{{{value}}}$."]
    else:
        expression, value = f"{a} \\cdot {b} - {c} \\cdot {d}", a * b - c * d
        lines = [f"Multiplication comes first: ${a} \\cdot {b} = {a * b}$ and ${c} \\cdot {d} = {c * d}$.",
                 f"Then ${a * b} - {c * d} = \\boxed{{{value}}}$."]
    problem = f"Evaluate ${expression}$."
    return (form, a, b, c, d), problem, lines, str(value)


def _percent(rng: random.Random, low: int, high: int) -> tuple[tuple, str, list[str], str]:
    percent = rng.choice((5, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 80))
    step = 100 // math.gcd(percent, 100)  # the whole must be a multiple of this for an integer answer
    whole = step * rng.randint(max(1, low), max(1, high))
    value = percent * whole // 100
    problem = f"What is ${percent}\\%$ of ${whole}$?"
    lines = [f"${percent}\\%$ of ${whole}$ is $\\frac{{{percent}}}{{100}} \\cdot {whole} = "
             f"\\frac{{{percent * whole}}}{{100}} = \\boxed{{{value}}}$."]
    return (percent, whole), problem, lines, str(value)


_KINDS: dict[str, Callable[[random.Random, int, int], tuple[tuple, str, list[str], str]]] = {
    "linear_equation": _linear,
    "fraction_sum": _fraction_sum,
    "gcd": _gcd,
    "lcm": _lcm,
    "order_of_operations": _order_of_operations,
    "percent": _percent,
}
MATH_KINDS = tuple(_KINDS)


def generate_math_problems(n: int, seed: int = 0, *, low: int = 2, high: int = 20,
                           kinds: Iterable[str] | None = None,
                           exclude: Iterable[MathProblem] = ()) -> list[MathProblem]:
    """``n`` distinct MATH-style problems (kinds drawn uniformly from MATH_KINDS or ``kinds``)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise ValueError(f"need 1 <= low <= high, got low={low!r}, high={high!r}")
    names = tuple(kinds) if kinds is not None else MATH_KINDS
    unknown = [name for name in names if name not in _KINDS]
    if unknown or not names:
        raise ValueError(f"unknown kind(s) {unknown}; choose from {MATH_KINDS}")

    rng = random.Random(seed)
    seen = {problem.key for problem in exclude} | {problem.problem for problem in exclude}
    problems: list[MathProblem] = []
    misses = 0  # draws in a row that gave nothing new: many means the space is used up
    while len(problems) < n and misses < 5000:
        kind = rng.choice(names)
        numbers, problem, lines, answer = _KINDS[kind](rng, low, high)
        key = (kind, numbers)
        if key in seen or problem in seen:
            misses += 1
            continue
        misses = 0
        seen.update((key, problem))
        problems.append(MathProblem(id="math-syn-" + hashlib.sha1(repr(key).encode()).hexdigest()[:12],
                                    kind=kind, problem=problem, solution=_finish(lines, answer),
                                    answer=answer, key=key))
    if len(problems) < n:
        raise ValueError(f"found only {len(problems)} distinct problems of the {n} asked for with numbers "
                         f"{low}..{high}; widen the number range")
    return problems
