"""Small statistics for paired before/after evaluations on the same problems.

    p = mcnemar(before_correct, after_correct)     # exact two-sided McNemar test
    low, high = wilson_interval(correct=123, n=400)

McNemar's test looks only at the discordant problems: ``b`` = right before and wrong after,
``c`` = wrong before and right after. Under the null hypothesis (training changed nothing) each
discordant problem is equally likely to go either way, so ``c ~ Binomial(b + c, 1/2)``; the exact
two-sided p-value is ``min(1, 2 * P[X <= min(b, c)])`` for ``X ~ Binomial(b + c, 1/2)``.
"""

from __future__ import annotations

import math
from typing import Sequence


def _as_bools(values: Sequence, name: str) -> list[bool]:
    out = []
    for i, v in enumerate(values):
        if v not in (True, False, 0, 1):
            raise ValueError(f"{name}[{i}]: expected a bool (correct or not), got {v!r}")
        out.append(bool(v))
    return out


def discordant_counts(before: Sequence[bool], after: Sequence[bool]) -> tuple[int, int]:
    """``(b, c)``: problems right before and wrong after, and wrong before and right after."""
    before, after = _as_bools(before, "before"), _as_bools(after, "after")
    if len(before) != len(after):
        raise ValueError(f"before and after must score the same problems: {len(before)} vs {len(after)} results")
    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    return b, c


def mcnemar(before: Sequence[bool], after: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value for paired per-problem correctness (1.0 with no discordant pair)."""
    from scipy.stats import binom

    b, c = discordant_counts(before, after)
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy of ``correct / n``."""
    from scipy.stats import norm

    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct={correct}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


__all__ = ["discordant_counts", "mcnemar", "wilson_interval"]
