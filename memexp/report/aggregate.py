"""From groups of runs to the numbers a report shows: per-group estimates of every final metric and
paired-seed comparisons between groups."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from memexp.report.grouping import Group
from memexp.report.runs import FINISHED, RunRecord, per_tensor_metrics
from memexp.report.stats import Estimate, PairedComparison, estimate, paired_comparison, with_holm
from memexp.splits import EVAL_PREFIXES

# The generalization-gap triple first (train, test, gap), then validation, in this order; then other
# train/val/test/gap metrics, then the implicit-regularization metrics (geom/...), then cost.
HEADLINE_METRICS = (
    "train/loss", "test/loss", "gap/loss", "val/loss", "train/acc", "test/acc", "gap/acc", "val/acc"
)  # fmt: skip
LAST_METRICS = ("wall_time_s",)


def metric_order(metric: str) -> tuple[int, int, str]:
    if metric in HEADLINE_METRICS:
        return (0, HEADLINE_METRICS.index(metric), metric)
    if metric in LAST_METRICS:
        return (3, 0, metric)
    return (1 if metric.startswith(EVAL_PREFIXES) else 2, 0, metric)


def table_metrics(groups: Sequence[Group], per_tensor: bool = False) -> tuple[list[str], int]:
    """The metrics of the table in order, and how many per-tensor ones were left out."""
    names = {key for group in groups for run in group.finished for key in run.final}
    left_out = set() if per_tensor else per_tensor_metrics(names)
    return sorted(names - left_out, key=metric_order), len(left_out)


@dataclass
class Report:
    keys: list[str]  # the grouping keys
    groups: list[Group]
    metrics: list[str]
    estimates: dict[tuple[str, str], Estimate]  # (group label, metric) -> estimate
    comparisons: list[PairedComparison]
    skipped_pairs: list[tuple[str, str, int]] = field(default_factory=list)  # (A, B, common seeds) with n < 2
    confidence: float = 0.95
    per_tensor_left_out: int = 0

    @property
    def problem_runs(self) -> list[tuple[Group, RunRecord]]:
        return [(g, run) for g in self.groups for run in g.runs if run.status != FINISHED]

    def totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for group in self.groups:
            for status, count in group.counts().items():
                totals[status] = totals.get(status, 0) + count
        return totals


def comparison_pairs(groups: Sequence[Group], baseline: Group | None) -> list[tuple[Group, Group]]:
    """(A, B) pairs, reported as A − B: every group against the baseline, or else every pair."""
    if baseline is not None:
        return [(group, baseline) for group in groups if group is not baseline]
    return list(itertools.combinations(groups, 2))


def build_report(
    keys: list[str],
    groups: list[Group],
    confidence: float = 0.95,
    baseline: Group | None = None,
    per_tensor: bool = False,
) -> Report:
    metrics, left_out = table_metrics(groups, per_tensor)
    estimates = {
        (group.label, metric): estimate(group.final_values(metric), confidence)
        for group in groups
        for metric in metrics
    }
    comparisons, skipped = [], []
    for group_a, group_b in comparison_pairs(groups, baseline):
        common = {r.seed for r in group_a.finished} & {r.seed for r in group_b.finished} - {None}
        if len(common) < 2:
            skipped.append((group_a.label, group_b.label, len(common)))
            continue
        for metric in metrics:
            comparison = paired_comparison(
                metric,
                group_a.label,
                group_a.seed_values(metric),
                group_b.label,
                group_b.seed_values(metric),
                confidence,
            )
            if comparison.n >= 2:
                comparisons.append(comparison)
    return Report(keys, groups, metrics, estimates, with_holm(comparisons), skipped, confidence, left_out)
