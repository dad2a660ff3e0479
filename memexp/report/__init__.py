"""``memexp report``: compare runs with tables, paired-seed tests and plots."""

from memexp.report.aggregate import Report, build_report
from memexp.report.grouping import Group, group_runs
from memexp.report.runs import RunRecord, find_runs, load_run_dir
from memexp.report.stats import Estimate, PairedComparison, estimate, paired_comparison

__all__ = [
    "Estimate",
    "Group",
    "PairedComparison",
    "Report",
    "RunRecord",
    "build_report",
    "estimate",
    "find_runs",
    "group_runs",
    "load_run_dir",
    "paired_comparison",
]
