"""A report in three forms: a rich table on the terminal, ``report.md`` with the plots, and CSV
files (``summary.csv`` one row per group and metric; ``runs.csv`` one row per run;
``comparisons.csv`` one row per paired comparison)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from memexp.report.aggregate import Report
from memexp.report.grouping import Group, duplicate_seeds
from memexp.report.runs import FINISHED, NOT_REACHED, STATUSES
from memexp.report.stats import Estimate, PairedComparison

if TYPE_CHECKING:
    from memexp.report.plots import PlotFile

TESTS_TEXT = (
    "difference = A − B per seed, over the seeds both groups finished; {pct}% t-interval of the mean "
    "difference; p-values of two two-sided tests: the paired t-test (assumes normal differences) and the "
    "Wilcoxon signed-rank test (zero differences dropped, mid-ranks for ties, exact over all 2^n sign flips "
    "for n ≤ 16; it cannot go below 2/2^n, e.g. 0.25 with n=3). Holm p: the paired-t p-value Holm-adjusted over "
    "the family of every group pair compared on the same metric (m = the family's size)."
)


def number(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4g}"


def p_value(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def holm_text(c: PairedComparison) -> str:
    return f"{p_value(c.t_pvalue_holm)} ({c.family_size})" if math.isfinite(c.t_pvalue_holm) else "-"


def cell(est: Estimate, group_n: int, multiline: bool) -> str:
    """``mean ± std`` and ``[low, high]``, with ``(n=k)`` when fewer seeds than the group has."""
    if est.n == 0:
        return "-"
    # A std at rounding level of the mean (identical finals that differ in the last bit) reads as 0.
    std = 0.0 if est.std <= 1e-12 * abs(est.mean) else est.std
    text = number(est.mean) if est.n == 1 else f"{number(est.mean)} ± {number(std)}"
    if est.n > 1:
        text += ("\n" if multiline else " ") + f"[{number(est.ci_low)}, {number(est.ci_high)}]"
    if est.n != group_n:
        text += f" (n={est.n})"
    return text


def difference_text(c: PairedComparison) -> str:
    return f"{number(c.difference.mean)} [{number(c.difference.ci_low)}, {number(c.difference.ci_high)}]"


def comparisons_by_pair(report: Report) -> dict[tuple[str, str], list[PairedComparison]]:
    pairs: dict[tuple[str, str], list[PairedComparison]] = {}
    for c in report.comparisons:
        pairs.setdefault((c.group_a, c.group_b), []).append(c)
    return pairs


def group_n(group: Group) -> int:
    """Distinct finished seeds (what the statistics are over)."""
    seeds = {run.seed for run in group.finished if run.seed is not None}
    return len(seeds) + sum(run.seed is None for run in group.finished)


def counts_text(group: Group) -> str:
    counts = group.counts()
    others = "".join(f", +{counts[s]} {s}" for s in STATUSES if s != FINISHED and counts[s])
    return f"n={group_n(group)}{others}"


def status_line(report: Report) -> str:
    totals = report.totals()
    # "not reached" exists only for readings (report --at): named when it happens.
    shown = [s for s in STATUSES if s != NOT_REACHED or totals.get(s, 0)]
    return ", ".join(f"{totals.get(s, 0)} {s}" for s in shown)


def grouping_line(report: Report) -> str:
    if not report.keys:
        return "all runs pooled (they differ only in the seed)"
    return f"grouped by {', '.join(report.keys)}; seeds aggregated"


# ----------------------------------------------------------------------------------------------
# Terminal


def print_report(report: Report, console: Console | None = None) -> None:
    # Labels, paths and error texts are escaped: "[optimizer=lion seed=1]" is not rich markup.
    console = console or Console()
    pct = round(report.confidence * 100)
    table = Table(
        title=f"final metrics: mean ± std over seeds, [{pct}% t-interval]",
        caption=escape(f"runs: {status_line(report)}; {grouping_line(report)}"),
    )
    table.add_column("metric", style="bold")
    for group in report.groups:
        table.add_column(escape(f"{group.label}\n{counts_text(group)}"), justify="right")
    for metric in report.metrics:
        cells = (cell(report.estimates[(g.label, metric)], group_n(g), True) for g in report.groups)
        table.add_row(escape(metric), *cells)
    console.print(table)

    for (group_a, group_b), comparisons in comparisons_by_pair(report).items():
        seeds = ", ".join(map(str, comparisons[0].seeds))
        compare = Table(title=escape(f"{group_a} − {group_b}: paired over seeds {seeds}"))
        for name in ("metric", "n", f"mean diff [{pct}% interval]", "paired t p", "Holm p (m)", "Wilcoxon p"):
            compare.add_column(name, justify="left" if name == "metric" else "right")
        for c in comparisons:
            significant = math.isfinite(c.t_pvalue) and c.t_pvalue < 1 - report.confidence
            compare.add_row(
                escape(c.metric),
                str(c.n),
                difference_text(c),
                f"[bold]{p_value(c.t_pvalue)}[/bold]" if significant else p_value(c.t_pvalue),
                holm_text(c),
                p_value(c.wilcoxon_pvalue),
            )
        console.print(compare)
    if report.comparisons:
        console.print(escape(TESTS_TEXT.format(pct=pct)), style="dim", highlight=False)
    for a, b, n in report.skipped_pairs:
        console.print(escape(f"no paired comparison of {a} and {b}: they share {n} finished seed(s), 2 needed"))

    problems = report.problem_runs
    if problems:
        runs = Table(title=f"runs left out of the statistics ({len(problems)})")
        for name in ("status", "group", "seed", "run", "detail"):
            runs.add_column(name, overflow="fold")
        for group, run in problems:
            runs.add_row(run.status, escape(group.label), str(run.seed), escape(run.source), escape(run.detail))
        console.print(runs)
    for group in report.groups:
        for seed, sources in duplicate_seeds(group).items():
            message = f"{group.label}: seed {seed} finished {len(sources)} times; using {sources[0]}"
            console.print(escape(message), style="yellow")


# ----------------------------------------------------------------------------------------------
# Markdown


def md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return lines


def markdown(
    report: Report,
    plots: Sequence[PlotFile],
    command: str,
    inputs: Sequence[str],
    created: str,
    notes: Sequence[str] = (),
) -> str:
    pct = round(report.confidence * 100)
    lines = [
        "# memexp report",
        "",
        f"Created {created} by `{command}`.",
        "",
        "Inputs: " + ", ".join(f"`{source}`" for source in inputs),
        "",
        f"Runs: {status_line(report)}. {grouping_line(report).capitalize()}. Only finished runs enter the "
        "statistics; the others are listed below.",
        "",
        *(line for note in notes for line in (note, "")),
        f"## Final metrics (mean ± std over seeds, [{pct}% t-interval])",
        "",
    ]
    header = ["metric", *(f"{g.label} ({counts_text(g)})" for g in report.groups)]
    rows = [
        [metric, *(cell(report.estimates[(g.label, metric)], group_n(g), False) for g in report.groups)]
        for metric in report.metrics
    ]
    lines += md_table(header, rows)
    if report.per_tensor_left_out:
        lines += [
            "",
            f"{report.per_tensor_left_out} per-tensor metrics (geom/<metric>/<parameter>) are left out; "
            "`--per-tensor` includes them.",
        ]
    lines += ["", "## Paired-seed comparisons", ""]
    if report.comparisons:
        lines += [TESTS_TEXT.format(pct=pct), ""]
        for (group_a, group_b), comparisons in comparisons_by_pair(report).items():
            seeds = ", ".join(map(str, comparisons[0].seeds))
            lines += [f"### {md(group_a)} − {md(group_b)} (seeds {seeds})", ""]
            lines += md_table(
                ["metric", "n", f"mean diff [{pct}% interval]", "paired t p", "Holm p (m)", "Wilcoxon p"],
                [
                    [
                        c.metric,
                        str(c.n),
                        difference_text(c),
                        p_value(c.t_pvalue),
                        holm_text(c),
                        p_value(c.wilcoxon_pvalue),
                    ]
                    for c in comparisons
                ],
            )
            lines.append("")
    else:
        lines.append(
            "None: no two groups share at least 2 finished seeds."
            if len(report.groups) > 1
            else "None: a single group."
        )
    for a, b, n in report.skipped_pairs:
        lines += ["", f"No comparison of `{a}` and `{b}`: {n} common finished seed(s), 2 needed."]
    problems = report.problem_runs
    lines += ["", f"## Runs left out of the statistics ({len(problems)})", ""]
    for group in report.groups:
        for seed, sources in duplicate_seeds(group).items():
            lines += [f"- `{group.label}`: seed {seed} finished {len(sources)} times; only `{sources[0]}` is used", ""]
    if problems:
        lines += md_table(
            ["status", "group", "seed", "run", "detail"],
            [[run.status, g.label, str(run.seed), f"`{run.source}`", run.detail] for g, run in problems],
        )
    else:
        lines.append("None: every run finished.")
    lines += ["", "## Plots", ""]
    for plot in plots:
        lines += [f"### {plot.title}", "", f"![{plot.title}]({plot.path.as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# CSV


def csv_number(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_csvs(report: Report, out_dir: Path) -> None:
    with (out_dir / "summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", *report.keys, "metric", "n", "mean", "std", "ci_low", "ci_high", *STATUSES])
        for group in report.groups:
            counts = group.counts()
            for metric in report.metrics:
                est = report.estimates[(group.label, metric)]
                writer.writerow(
                    [
                        group.label,
                        *(group.settings[k] for k in report.keys),
                        metric,
                        est.n,
                        *(csv_number(v) for v in (est.mean, est.std, est.ci_low, est.ci_high)),
                        *(counts[s] for s in STATUSES),
                    ]
                )
    with (out_dir / "runs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "seed", "status", "step", "max_steps", "source", "detail", *report.metrics])
        for group in report.groups:
            for run in group.runs:
                writer.writerow(
                    [
                        group.label,
                        csv_number(run.seed),
                        run.status,
                        csv_number(run.step),
                        csv_number(run.max_steps),
                        run.source,
                        run.detail,
                        *(csv_number(run.final.get(m)) for m in report.metrics),
                    ]
                )
    with (out_dir / "comparisons.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "group_a",
                "group_b",
                "metric",
                "n",
                "seeds",
                "mean_diff",
                "std_diff",
                "ci_low",
                "ci_high",
                "t_statistic",
                "t_pvalue",
                "t_pvalue_holm",
                "holm_family_size",
                "wilcoxon_statistic",
                "wilcoxon_pvalue",
            ]
        )
        for c in report.comparisons:
            d = c.difference
            writer.writerow(
                [
                    c.group_a,
                    c.group_b,
                    c.metric,
                    c.n,
                    " ".join(map(str, c.seeds)),
                    *(
                        csv_number(v)
                        for v in (
                            d.mean,
                            d.std,
                            d.ci_low,
                            d.ci_high,
                            c.t_statistic,
                            c.t_pvalue,
                            c.t_pvalue_holm,
                        )
                    ),
                    c.family_size,
                    *(csv_number(v) for v in (c.wilcoxon_statistic, c.wilcoxon_pvalue)),
                ]
            )


def read_runs_matrix(path: Path, groups: Sequence[str], metric: str) -> tuple[list[str], np.ndarray]:
    """From a ``runs.csv`` this module wrote: the seeds that have a finite ``metric`` in every one of
    ``groups`` (finished runs only: "not reached" with ``--at``, diverged and failed rows are left
    out), in seed order, and the ``(seeds × groups)`` matrix of those values (paired readings)."""
    values: dict[str, dict[str, float]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row["group"] not in groups or row.get("status", FINISHED) != FINISHED:
                continue
            text = row.get(metric) or ""
            number = float(text) if text else math.nan
            if math.isfinite(number):
                values.setdefault(row["seed"], {})[row["group"]] = number
    seeds = sorted((seed for seed, found in values.items() if set(groups) <= set(found)), key=int)
    return seeds, np.array([[values[seed][group] for group in groups] for seed in seeds], dtype=float)
