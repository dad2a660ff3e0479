"""Seed statistics: the estimate of one group's final metric, and paired-seed comparisons.

Conventions (stated in every report):
- std is the sample standard deviation (ddof=1); the interval is the two-sided Student-t interval
  for the mean, ``mean ± t_{(1+c)/2, n-1} · std / sqrt(n)``, which assumes roughly normal seed-to-seed
  variation and is honest about small n (with n=2 it is wide, as it should be).
- A paired comparison of groups A and B uses only the seeds both ran to completion; the difference
  is A − B per seed. Two two-sided tests are reported side by side: the paired t-test (scipy
  ``ttest_rel``: normal differences) and the Wilcoxon signed-rank test (zero differences dropped,
  mid-ranks for ties, exact null distribution over all 2^n sign flips for n ≤ 16, the normal
  approximation beyond); no normality assumption, but it cannot go below p = 2/2^n, e.g. 0.25
  with 3 seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

# scipy is imported inside the functions that need it: `memexp report --help` stays fast.

NAN = float("nan")


@dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` values with its sample std and two-sided t-interval (NaN where undefined)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


class Band(Enum):
    """The spread over seeds a plot shades around the mean."""

    std = "std"  # mean ± one sample std
    ci = "ci"  # the t-interval of the mean
    minmax = "minmax"  # the full range of the seeds


def t_quantile(confidence: float, dof: int) -> float:
    from scipy import stats as scipy_stats

    return float(scipy_stats.t.ppf(0.5 + confidence / 2.0, dof))


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean, std (ddof=1) and the t-interval of the finite ``values``; non-finite ones are ignored
    (a finished run has finite metrics; a NaN here means the metric was not logged)."""
    array = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    n = int(array.size)
    if n == 0:
        return Estimate(0, NAN, NAN, NAN, NAN)
    mean = float(array.mean())
    if n == 1:
        return Estimate(1, mean, NAN, NAN, NAN)
    std = float(array.std(ddof=1))
    half_width = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return Estimate(n, mean, std, mean - half_width, mean + half_width)


@dataclass(frozen=True)
class PairedComparison:
    """Group A minus group B on one metric, over the seeds both have."""

    metric: str
    group_a: str
    group_b: str
    seeds: tuple[int, ...]
    difference: Estimate  # of the per-seed differences A − B
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float
    # Holm-adjusted paired-t p-value over the report's family for this metric (every pair of groups
    # compared on it), and that family's size: filled by `with_holm`, NaN / 1 for a lone comparison.
    t_pvalue_holm: float = NAN
    family_size: int = 1

    @property
    def n(self) -> int:
        return len(self.seeds)


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (controls the family-wise error rate, any dependence): sort the m
    defined p-values ascending, p_(i) -> max_{j <= i} min(1, (m − j + 1) p_(j)); NaN stays NaN and
    does not count towards m."""
    defined = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    adjusted = [NAN] * len(pvalues)
    running_max = 0.0
    m = len(defined)
    for rank, (p, index) in enumerate(defined):
        running_max = max(running_max, min(1.0, (m - rank) * p))
        adjusted[index] = running_max
    return adjusted


def with_holm(comparisons: Sequence[PairedComparison]) -> list[PairedComparison]:
    """The comparisons with Holm-adjusted t p-values, one family per metric (the verdict on a metric
    is one of as many tests as there are group pairs compared on it)."""
    by_metric: dict[str, list[int]] = {}
    for index, c in enumerate(comparisons):
        by_metric.setdefault(c.metric, []).append(index)
    result = list(comparisons)
    for indices in by_metric.values():
        adjusted = holm_adjust([comparisons[i].t_pvalue for i in indices])
        family = sum(math.isfinite(comparisons[i].t_pvalue) for i in indices)
        for i, p in zip(indices, adjusted, strict=True):
            result[i] = replace(comparisons[i], t_pvalue_holm=p, family_size=family)
    return result


def paired_t(differences: np.ndarray) -> tuple[float, float]:
    """Two-sided one-sample t-test of the differences against 0 (= scipy's ``ttest_rel``). NaN when
    undefined: fewer than two pairs, or all differences equal (zero variance)."""
    if differences.size < 2 or np.all(differences == differences[0]):
        return NAN, NAN
    from scipy import stats as scipy_stats

    result = scipy_stats.ttest_1samp(differences, 0.0)
    return float(result.statistic), float(result.pvalue)


# Up to this many non-zero differences the signed-rank p-value is exact: all 2^n sign flips are
# enumerated (65,536 for 16, a few ms), which stays exact with ties, where scipy switches to a slow
# permutation test. Beyond it, scipy's normal approximation with the tie correction.
EXACT_SIGNED_RANK_MAX_N = 16


def wilcoxon_signed_rank(differences: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of the differences against 0: (statistic min(W+, W-),
    p-value); zero differences are dropped, tied |differences| get mid-ranks. NaN when no
    difference is non-zero."""
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return NAN, NAN
    from scipy import stats as scipy_stats

    ranks = scipy_stats.rankdata(np.abs(nonzero))
    w_plus = float(ranks[nonzero > 0].sum())
    statistic = min(w_plus, float(ranks.sum()) - w_plus)
    if nonzero.size <= EXACT_SIGNED_RANK_MAX_N:
        return statistic, exact_signed_rank_pvalue(ranks, w_plus)
    result = scipy_stats.wilcoxon(nonzero, method="asymptotic", alternative="two-sided")
    return statistic, float(result.pvalue)


def exact_signed_rank_pvalue(ranks: np.ndarray, w_plus: float) -> float:
    """P(|W+ − E W+| ≥ |observed − E W+|) over all 2^n equally likely sign assignments (the null)."""
    n = ranks.size
    signs = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    null_w_plus = signs @ ranks
    centre = ranks.sum() / 2.0
    tolerance = 1e-9 * max(1.0, centre)  # mid-ranks are halves: compare with a little slack
    return float(np.mean(np.abs(null_w_plus - centre) >= abs(w_plus - centre) - tolerance))


def paired_comparison(
    metric: str,
    group_a: str,
    values_a: Mapping[int, float],
    group_b: str,
    values_b: Mapping[int, float],
    confidence: float = 0.95,
) -> PairedComparison:
    """Compare per-seed values (seed -> final value) of two groups on the seeds both have."""
    seeds = tuple(
        sorted(
            seed
            for seed in set(values_a) & set(values_b)
            if math.isfinite(values_a[seed]) and math.isfinite(values_b[seed])
        )
    )
    differences = np.asarray([values_a[s] - values_b[s] for s in seeds], dtype=np.float64)
    t_statistic, t_pvalue = paired_t(differences)
    w_statistic, w_pvalue = wilcoxon_signed_rank(differences)
    return PairedComparison(
        metric=metric,
        group_a=group_a,
        group_b=group_b,
        seeds=seeds,
        difference=estimate(differences.tolist(), confidence),
        t_statistic=t_statistic,
        t_pvalue=t_pvalue,
        wilcoxon_statistic=w_statistic,
        wilcoxon_pvalue=w_pvalue,
    )
