"""McNemar's exact test and the Wilson interval, checked by hand and against scipy."""

import pytest
from scipy.stats import binomtest

from tulu_lab.stats import discordant_counts, mcnemar, wilson_interval


def test_mcnemar_by_hand():
    # b = 1 (right -> wrong), c = 5 (wrong -> right): p = 2 * P[X <= 1], X ~ Bin(6, 1/2) = 2 * 7/64
    before = [True, False, False, False, False, False, True, False]
    after = [False, True, True, True, True, True, True, False]
    assert discordant_counts(before, after) == (1, 5)
    assert mcnemar(before, after) == pytest.approx(14 / 64)
    assert mcnemar(after, before) == pytest.approx(14 / 64)  # symmetric


def test_mcnemar_edge_cases_and_scipy():
    assert mcnemar([True, False], [True, False]) == 1.0  # no discordant pair
    assert mcnemar([False] * 3, [True] * 3) == pytest.approx(0.25)  # 2 * (1/2)^3
    for b, c in [(3, 20), (10, 10), (0, 12), (40, 61)]:
        before = [True] * b + [False] * c + [True] * 7
        after = [False] * b + [True] * c + [True] * 7
        assert mcnemar(before, after) == pytest.approx(binomtest(c, b + c, 0.5).pvalue)
    with pytest.raises(ValueError, match="same problems"):
        mcnemar([True], [True, False])
    with pytest.raises(ValueError, match=r"after\[1\]"):
        mcnemar([True, True], [True, "yes"])


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


@pytest.mark.parametrize("correct, n, confidence", [(0, 7, 0.95), (3, 7, 0.9), (123, 400, 0.95), (399, 400, 0.99)])
def test_wilson_interval_matches_the_closed_form(correct, n, confidence):
    import math

    from scipy.stats import norm

    z = norm.ppf(0.5 + confidence / 2)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = wilson_interval(correct, n, confidence)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)
