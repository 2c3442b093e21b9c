"""Small statistics for paired before/after evaluations on the same problems.

    p = mcnemar(before_correct, after_correct)     # exact two-sided McNemar test
    low, high = wilson_interval(correct=123, n=400)

McNemar's test looks only at the discordant problems: ``b`` = right before and wrong after,
``c`` = wrong before and right after. Under the null hypothesis (training changed nothing) each
discordant problem is equally likely to go either way, so ``c ~ Binomial(b + c, 1/2)``; the exact
two-sided p-value is scipy's binomial test of ``c`` out of ``b + c`` at 1/2 (for p = 1/2 that is
``min(1, 2 * P[X <= min(b, c)])``). The Wilson interval is scipy's too (``proportion_ci``).
"""

from __future__ import annotations

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
    from scipy.stats import binomtest

    b, c = discordant_counts(before, after)
    if b + c == 0:
        return 1.0
    return float(binomtest(c, b + c, 0.5).pvalue)


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy of ``correct / n``."""
    from scipy.stats import binomtest

    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct={correct}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    interval = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(interval.low)), min(1.0, float(interval.high))


__all__ = ["discordant_counts", "mcnemar", "wilson_interval"]
