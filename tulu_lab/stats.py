"""Small statistics for paired before/after evaluations on the same problems.

    p = mcnemar(before_correct, after_correct)     # exact two-sided McNemar test
    low, high = wilson_interval(correct=123, n=400)
    low, high = paired_difference_interval(before_correct, after_correct)   # 95% CI of after - before

McNemar's test looks only at the discordant problems: ``b`` = right before and wrong after,
``c`` = wrong before and right after. Under the null hypothesis (training changed nothing) each
discordant problem is equally likely to go either way, so ``c ~ Binomial(b + c, 1/2)``; the exact
two-sided p-value is scipy's binomial test of ``c`` out of ``b + c`` at 1/2 (for p = 1/2 that is
``min(1, 2 * P[X <= min(b, c)])``). The Wilson interval is scipy's too (``proportion_ci``).

The interval for a paired gain (accuracy after minus accuracy before, on the same problems) is
Newcombe's (1998, Statistics in Medicine 17:2635, method 10): the two accuracies' Wilson intervals
combined with the phi correlation of the 2x2 paired table, which keeps the interval inside [-1, 1]
and covers well with few discordant pairs, where the Wald interval does not.
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


def paired_difference_interval(before: Sequence[bool], after: Sequence[bool],
                               confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) for ``mean(after) - mean(before)`` on paired verdicts."""
    import math

    before, after = _as_bools(before, "before"), _as_bools(after, "after")
    if len(before) != len(after) or not before:
        raise ValueError(f"before and after must score the same, non-empty problems: {len(before)} vs {len(after)}")
    n = len(before)
    both = sum(1 for x, y in zip(before, after) if x and y)
    b, c = discordant_counts(before, after)          # right before only, right after only
    neither = n - both - b - c
    p1, p2 = (both + b) / n, (both + c) / n
    l1, u1 = wilson_interval(both + b, n, confidence)
    l2, u2 = wilson_interval(both + c, n, confidence)
    margins = (both + b) * (c + neither) * (both + c) * (b + neither)
    if margins == 0:
        phi = 0.0
    else:
        cross = both * neither - b * c
        # Newcombe's continuity correction of phi when the cross product is positive
        phi = (max(cross - n / 2, 0.0) if cross > 0 else cross) / math.sqrt(margins)
    gain = p2 - p1
    low = gain - math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    high = gain + math.sqrt(max((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2, 0.0))
    return max(-1.0, low), min(1.0, high)


__all__ = ["discordant_counts", "mcnemar", "paired_difference_interval", "wilson_interval"]
