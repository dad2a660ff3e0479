"""scripts/twin_distance.py: the numbers behind docs/results/twin_distance/ (log-linear reading at a
fixed time, the log-log slope, the per-seed paired test with diverged copies)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from memexp.report.runs import MetricTrace


def load_script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "twin_distance.py"
    spec = importlib.util.spec_from_file_location("twin_distance_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


SCRIPT = load_script()


def test_value_at_interpolates_log_linearly_and_never_extrapolates() -> None:
    trace = MetricTrace(np.array([10, 20, 30]), np.array([1.0, 100.0, 50.0]))
    assert SCRIPT.value_at(trace, 15) == pytest.approx(10.0, rel=1e-12)  # geometric mean of 1 and 100
    assert SCRIPT.value_at(trace, 20) == 100.0
    assert SCRIPT.value_at(trace, 25) == pytest.approx(math.sqrt(5000.0), rel=1e-12)
    assert math.isnan(SCRIPT.value_at(trace, 5)) and math.isnan(SCRIPT.value_at(trace, 31))
    diverged = MetricTrace(np.array([10, 20]), np.array([1.0, math.nan]))
    assert math.isnan(SCRIPT.value_at(diverged, 15))


def test_slope_recovers_the_power_of_h() -> None:
    hs = [2.5e-4, 5e-4, 1e-3, 2e-3]
    assert SCRIPT.slope(hs, [3.0 * h**2 for h in hs]) == pytest.approx(2.0, abs=1e-12)
    assert SCRIPT.slope(hs, [0.7 * h for h in hs]) == pytest.approx(1.0, abs=1e-12)
    assert SCRIPT.slope(hs, [math.nan, math.inf, 1.0, 2.0]) == pytest.approx(1.0, abs=1e-12)  # finite points only
    assert SCRIPT.slope(hs, [math.nan, math.nan, math.nan, 1.0]) is None


def test_a_diverged_copy_counts_as_infinitely_far() -> None:
    assert SCRIPT.log_ratio(math.inf, 2.0) == math.inf
    assert SCRIPT.log_ratio(2.0, math.inf) == -math.inf
    assert math.isnan(SCRIPT.log_ratio(math.inf, math.inf))
    assert SCRIPT.log_ratio(1.0, math.e) == pytest.approx(-1.0)
    assert SCRIPT.last_value(MetricTrace(np.array([10, 20]), np.array([1.0, math.nan]))) == math.inf


def test_paired_test_on_log_ratios() -> None:
    ratios = [math.log(r) for r in (0.5, 0.25, 0.5, 0.25)]
    result = SCRIPT.paired_test(ratios)
    assert result["corrected_closer"] == 4 and result["n"] == 4
    assert result["geometric_mean_ratio"] == pytest.approx(math.sqrt(0.5 * 0.25), rel=1e-12)
    # t = mean / (sd / sqrt(n)) of the log ratios: mean -1.5 ln 2, sd ln 2 / sqrt(3) -> t = -3 sqrt(3)
    assert result["t_statistic"] == pytest.approx(-3.0 * math.sqrt(3.0), rel=1e-12)
    with_divergence = SCRIPT.paired_test([*ratios, math.inf])
    assert with_divergence["corrected_closer"] == 4 and with_divergence["n"] == 5
    assert with_divergence["diverged_corrected"] == 1
    assert math.isnan(with_divergence["t_pvalue"])  # undefined with an infinite difference
    # the signed-rank test only sees ranks: a diverged seed ranks like any ratio larger than the rest
    same_ranks = SCRIPT.paired_test([*ratios, 100.0])
    assert with_divergence["wilcoxon_pvalue"] == pytest.approx(same_ranks["wilcoxon_pvalue"], rel=1e-12)
    # the exact two-sided signed-rank p by hand: ranks 1.5, 1.5, 3.5, 3.5 negative and 5 positive give
    # W+ = 5; p = 2 P(W+ <= 5) over the 32 equally likely sign patterns
    ranks = np.array([1.5, 1.5, 3.5, 3.5, 5.0])
    patterns = [sum(r for r, s in zip(ranks, f"{k:05b}", strict=True) if s == "1") for k in range(32)]
    expected = 2 * sum(w <= 5.0 for w in patterns) / 32
    assert with_divergence["wilcoxon_pvalue"] == pytest.approx(min(1.0, expected), rel=1e-12)


def test_per_seed_slopes_are_each_seeds_own_fit() -> None:
    hs = [2.5e-4, 5e-4, 1e-3]
    rows = [
        {
            "lr": h,
            "seeds": [0, 1, 2],
            "corrected": [3.0 * h**2, 5.0 * h**2, math.nan],  # seed 2's twin diverged: left out
            "uncorrected": [0.5 * h, 0.2 * h**1.5, 1.0],
        }
        for h in hs
    ]
    result = SCRIPT.per_seed_slopes(rows)
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    assert [s["corrected"] for s in result["seeds"]] == pytest.approx([2.0, 2.0], abs=1e-12)
    assert [s["uncorrected"] for s in result["seeds"]] == pytest.approx([1.0, 1.5], abs=1e-12)
    assert result["mean_difference"] == pytest.approx(0.75, abs=1e-12)
