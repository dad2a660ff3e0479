"""Seed statistics against hand computations and closed forms (not against scipy itself)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from memexp.report.stats import estimate, holm_adjust, paired_comparison, paired_t, wilcoxon_signed_rank, with_holm

# Student-t 97.5% quantile with 3 degrees of freedom, from printed tables.
T_975_DF3 = 3.182446305284263


def test_estimate_mean_std_and_t_interval_by_hand() -> None:
    result = estimate([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # ddof=1
    assert (result.n, result.mean) == (4, 2.5)
    assert result.std == pytest.approx(std, rel=1e-14)
    half = T_975_DF3 * std / 2.0
    assert result.ci_low == pytest.approx(2.5 - half, rel=1e-12)
    assert result.ci_high == pytest.approx(2.5 + half, rel=1e-12)


def test_estimate_with_two_values_uses_the_cauchy_quantile() -> None:
    # df=1: the t distribution is Cauchy, quantile(0.975) = tan(pi * 0.475).
    result = estimate([0.5, 0.7], confidence=0.95)
    half = math.tan(math.pi * 0.475) * (0.2 / math.sqrt(2)) / math.sqrt(2)
    assert result.mean == pytest.approx(0.6, rel=1e-14)
    assert result.ci_high - result.mean == pytest.approx(half, rel=1e-10)


def test_estimate_undefined_parts_are_nan() -> None:
    one = estimate([3.0])
    assert (one.n, one.mean) == (1, 3.0) and math.isnan(one.std) and math.isnan(one.ci_low)
    none = estimate([float("nan")])
    assert none.n == 0 and math.isnan(none.mean)


def test_paired_t_pvalue_matches_closed_form_for_two_degrees_of_freedom() -> None:
    # Three seeds: differences 0.1, 0.3, 0.2 -> mean 0.2, std 0.1, t = 0.2 / (0.1 / sqrt 3) = 2 sqrt 3.
    # For df=2 the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p is 1 - |t| / sqrt(2 + t^2).
    comparison = paired_comparison(
        "test/loss", "a", {0: 1.1, 1: 1.3, 2: 1.2, 7: 9.0}, "b", {0: 1.0, 1: 1.0, 2: 1.0, 3: 5.0}
    )
    t = 2 * math.sqrt(3)
    assert comparison.seeds == (0, 1, 2)  # only the common seeds
    assert comparison.t_statistic == pytest.approx(t, rel=1e-10)
    assert comparison.t_pvalue == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    assert comparison.difference.mean == pytest.approx(0.2, rel=1e-12)
    assert comparison.difference.std == pytest.approx(0.1, rel=1e-10)


def midranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def exact_wilcoxon_p(differences: list[float]) -> float:
    """Two-sided exact p by looping over all 2^n sign assignments of the (mid-)ranks."""
    nonzero = [d for d in differences if d != 0]
    ranks = midranks([abs(d) for d in nonzero])
    total = sum(ranks)
    observed = abs(sum(r for r, d in zip(ranks, nonzero) if d > 0) - total / 2)
    hits = 0
    for signs in itertools.product((0, 1), repeat=len(nonzero)):
        w_plus = sum(r for r, s in zip(ranks, signs) if s)
        hits += abs(w_plus - total / 2) >= observed - 1e-12
    return hits / 2 ** len(nonzero)


NO_TIES = [[0.3, -0.1, 0.5, 0.7, 0.2, 0.9], [1.0, 2.0, 3.0], [-0.4, 0.1, -0.25, -0.6, -0.05]]
# Accuracy differences are multiples of 1/n_examples: ties and zeros are common.
WITH_TIES = [[0.02, 0.02, -0.01, 0.0, 0.03, 0.02, -0.02], [0.1, -0.1, 0.2, 0.2, 0.3]]


@pytest.mark.parametrize("differences", NO_TIES + WITH_TIES)
def test_wilcoxon_pvalue_matches_exhaustive_enumeration(differences: list[float]) -> None:
    statistic, p = wilcoxon_signed_rank(np.asarray(differences))
    assert p == pytest.approx(exact_wilcoxon_p(differences), rel=1e-12)
    ranks = midranks([abs(d) for d in differences if d != 0])
    w_plus = sum(r for r, d in zip(ranks, [d for d in differences if d != 0]) if d > 0)
    assert statistic == min(w_plus, sum(ranks) - w_plus)


@pytest.mark.parametrize("differences", NO_TIES)
def test_wilcoxon_without_ties_agrees_with_scipys_exact_test(differences: list[float]) -> None:
    from scipy.stats import wilcoxon

    assert wilcoxon_signed_rank(np.asarray(differences))[1] == pytest.approx(
        wilcoxon(differences, method="exact").pvalue, rel=1e-12
    )


def test_wilcoxon_beyond_the_exact_range_uses_the_normal_approximation() -> None:
    # n = 20 differences, the five smallest positive: W+ = 1 + 2 + ... + 5 = 15; z by the closed form.
    differences = np.asarray([float(i) if i <= 5 else -float(i) for i in range(1, 21)])
    n, w_plus = 20, 15.0
    mean, sd = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    z = (w_plus - mean) / sd
    p_normal = math.erfc(abs(z) / math.sqrt(2))
    assert wilcoxon_signed_rank(differences)[1] == pytest.approx(p_normal, rel=1e-9)


def test_degenerate_differences_give_nan_not_a_crash() -> None:
    assert all(math.isnan(v) for v in paired_t(np.asarray([0.5, 0.5, 0.5])))  # zero variance
    assert all(math.isnan(v) for v in wilcoxon_signed_rank(np.zeros(4)))
    assert all(math.isnan(v) for v in paired_t(np.asarray([0.5])))


def test_holm_adjust_by_hand_with_step_down_monotonicity_and_nan() -> None:
    # m = 4 defined p-values: sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01=0.04, 3*0.02=0.06, 2*0.03=0.06, 1*0.5.
    adjusted = holm_adjust([0.03, math.nan, 0.01, 0.5, 0.02])
    assert adjusted[0] == pytest.approx(0.06)
    assert math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.04)
    assert adjusted[3] == pytest.approx(0.5)
    assert adjusted[4] == pytest.approx(0.06)
    # The running maximum keeps the order: 3*0.02=0.06 would fall below 4*0.02=0.08 without it.
    assert holm_adjust([0.02, 0.02, 0.9, 0.4]) == pytest.approx([0.08, 0.08, 0.9, 0.8])
    assert holm_adjust([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_with_holm_forms_one_family_per_metric() -> None:
    values = {
        "A": {0: 1.0, 1: 2.0, 2: 3.5},
        "B": {0: 0.5, 1: 1.2, 2: 3.0},
        "C": {0: 0.0, 1: 2.1, 2: 2.0},
    }
    comparisons = [
        paired_comparison(metric, a, values[a], b, values[b])
        for metric in ("m1", "m2")
        for a, b in (("A", "B"), ("A", "C"), ("B", "C"))
    ]
    adjusted = with_holm(comparisons)
    for metric in ("m1", "m2"):
        family = [c for c in adjusted if c.metric == metric]
        assert [c.family_size for c in family] == [3, 3, 3]
        assert [c.t_pvalue_holm for c in family] == pytest.approx(holm_adjust([c.t_pvalue for c in family]))
    assert adjusted[0].t_pvalue_holm >= adjusted[0].t_pvalue
