"""PNG plots of a report, one colour per group: the group's mean over seeds as a line and the spread
over seeds as a band; diverged runs drawn individually (dotted, ending in ×) so a blow-up is seen.

Uses matplotlib's object API (``Figure`` rendered by Agg) rather than pyplot: no global state, no
display needed, safe on a headless node.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from memexp.report.grouping import Group
from memexp.report.runs import DIVERGED, per_tensor_metrics
from memexp.report.stats import Band, t_quantile
from memexp.splits import HELD_OUT_SPLIT, SPLIT_LABELS, SPLITS

BAND_TEXT = {
    Band.std: "band: mean ± 1 std over seeds",
    Band.ci: "band: {pct}% t-interval of the mean over seeds",
    Band.minmax: "band: min–max over seeds",
}
DIVERGED_LABEL = "diverged run (dotted, × = last finite value)"
SPLIT_STYLES = {"train": "-", "val": ":", "test": "--"}


@dataclass
class Curve:
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray  # band edges; equal to the mean where only one seed has the step
    high: np.ndarray


@dataclass(frozen=True)
class PlotOptions:
    band: Band = Band.std
    confidence: float = 0.95  # for Band.ci
    per_tensor: bool = False  # also plot geom/<metric>/<parameter> breakdowns
    log_x: bool = False  # log-scaled steps (metrics on a log schedule resolve the early transient)

    @property
    def band_text(self) -> str:
        return BAND_TEXT[self.band].format(pct=round(self.confidence * 100))


@dataclass
class PlotFile:
    path: Path  # relative to the report dir
    title: str


def group_curve(group: Group, metric: str, band: Band, confidence: float) -> Curve | None:
    """Mean and band over the group's finished runs at every step any of them logged (a step some
    seeds lack is averaged over those that have it)."""
    points: dict[int, list[float]] = {}
    for run in group.finished:
        trace = run.history.get(metric)
        if trace is None:
            continue
        for step, value in zip(trace.steps.tolist(), trace.values.tolist()):
            if math.isfinite(value):
                points.setdefault(step, []).append(value)
    if not points:
        return None
    steps = np.asarray(sorted(points), dtype=np.float64)
    mean, low, high = (np.empty(steps.size) for _ in range(3))
    for i, step in enumerate(sorted(points)):
        values = np.asarray(points[step])
        mean[i] = values.mean()
        if values.size < 2:
            low[i] = high[i] = mean[i]
        elif band is Band.minmax:
            low[i], high[i] = values.min(), values.max()
        else:
            spread = values.std(ddof=1)
            if band is Band.ci:
                spread *= t_quantile(confidence, values.size - 1) / math.sqrt(values.size)
            low[i], high[i] = mean[i] - spread, mean[i] + spread
    return Curve(steps, mean, low, high)


def group_colours(groups: Sequence[Group]) -> dict[str, tuple[float, ...]]:
    palette = colormaps["tab10" if len(groups) <= 10 else "tab20"]
    return {group.label: palette(i % palette.N) for i, group in enumerate(groups)}


def draw_metric(
    axes: Axes,
    groups: Sequence[Group],
    metric: str,
    colours: dict[str, tuple[float, ...]],
    options: PlotOptions,
    linestyle: str = "-",
    label_suffix: str = "",
) -> None:
    """Draw one metric for every group: mean and band over finished runs, diverged runs one by one."""
    for group in groups:
        colour = colours[group.label]
        curve = group_curve(group, metric, options.band, options.confidence)
        if curve is not None:
            n = len(group.seed_values(metric)) or len(group.finished)
            label = f"{group.label}{label_suffix} (n={n})"
            axes.plot(curve.steps, curve.mean, linestyle, color=colour, lw=1.8, label=label)
            if np.any(curve.high > curve.low):
                axes.fill_between(curve.steps, curve.low, curve.high, color=colour, alpha=0.2, lw=0)
        elif not group.finished:
            # A group with no finished run still gets its colour in the legend, saying why it has no curve.
            counts = ", ".join(f"{n} {status}" for status, n in group.counts().items() if n)
            add_legend_entry(axes, f"{group.label}: no finished run ({counts})", colour)
        for run in group.runs:
            trace = run.history.get(metric)
            if run.status != DIVERGED or trace is None:
                continue
            finite = np.isfinite(trace.values)
            if not finite.any():
                continue
            label = None if has_legend_entry(axes, DIVERGED_LABEL) else DIVERGED_LABEL
            axes.plot(trace.steps[finite], trace.values[finite], ":", color=colour, lw=1.0, alpha=0.8, label=label)
            last = np.flatnonzero(finite)[-1]
            axes.plot([trace.steps[last]], [trace.values[last]], "x", color=colour, ms=7, mew=2)


def has_legend_entry(axes: Axes, label: str) -> bool:
    return label in axes.get_legend_handles_labels()[1]


def add_legend_entry(axes: Axes, label: str, colour: tuple[float, ...]) -> None:
    if not has_legend_entry(axes, label):
        axes.plot([], [], ":", color=colour, label=label)


def auto_log_scale(axes: Axes) -> None:
    """Log y when the drawn values are positive and span more than two decades (loss curves)."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=np.float64) for line in axes.get_lines()] or [[]])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 100:
        axes.set_yscale("log")


def new_figure(rows: int = 1) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(7.5, 3.6 * rows), layout="constrained")
    axes = [figure.add_subplot(rows, 1, i + 1) for i in range(rows)]
    return figure, axes


def finish_axes(axes: Axes, title: str, ylabel: str, options: PlotOptions) -> None:
    if options.log_x:
        axes.set_xscale("log")
    axes.set_title(f"{title}; {options.band_text}", fontsize=10)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7, loc="best")


def file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", metric).strip("_") + ".png"


def history_metrics(groups: Sequence[Group]) -> list[str]:
    keys: dict[str, None] = {}
    for group in groups:
        for run in group.runs:
            for key in run.history:
                keys.setdefault(key, None)
    return sorted(keys)


@dataclass
class PlotSpec:
    kind: str  # "split": train vs held-out of one quantity; "gap": all gap/* stacked; "metric": one trace
    metrics: list[str]
    relative: str
    title: str


# Per-metric plots skip these: "step"/"epoch" are axes, not results.
NOT_PLOTTED = frozenset({"step", "epoch"})


def plan_plots(groups: Sequence[Group], per_tensor: bool) -> list[PlotSpec]:
    """Which files the report gets, in report order (per-tensor breakdowns only when asked)."""
    metrics = history_metrics(groups)
    if not per_tensor:
        left_out = per_tensor_metrics(metrics)
        metrics = [m for m in metrics if m not in left_out]
    quantities = sorted({m.split("/", 1)[1] for m in metrics if m.startswith(f"{HELD_OUT_SPLIT}/")})
    specs = [
        PlotSpec(
            "split",
            [f"{split}/{q}" for split in SPLITS if f"{split}/{q}" in metrics],
            f"{q}_curves.png",
            f"{q}: train vs validation vs test",
        )
        for q in quantities
    ]
    gap_metrics = [m for m in metrics if m.startswith("gap/")]
    if gap_metrics:
        specs.append(PlotSpec("gap", gap_metrics, "gap.png", "generalization gap vs step"))
    covered = {m for spec in specs for m in spec.metrics}
    specs += [
        PlotSpec("metric", [m], f"metrics/{file_name(m)}", m)
        for m in metrics
        if m not in covered and m not in NOT_PLOTTED
    ]
    return specs


def render(spec: PlotSpec, groups: Sequence[Group], options: PlotOptions) -> Figure:
    colours = group_colours(groups)
    if spec.kind == "split":
        quantity = spec.metrics[0].split("/", 1)[1]
        figure, (axes,) = new_figure()
        for metric in spec.metrics:
            split = metric.split("/", 1)[0]
            draw_metric(axes, groups, metric, colours, options, SPLIT_STYLES[split], f" {SPLIT_LABELS[split]}")
        if quantity == "loss":
            auto_log_scale(axes)
        finish_axes(axes, f"{quantity}: train (solid), validation (dotted), test (dashed)", quantity, options)
        return figure
    if spec.kind == "gap":
        figure, all_axes = new_figure(len(spec.metrics))
        for axes, metric in zip(all_axes, spec.metrics):
            draw_metric(axes, groups, metric, colours, options)
            # memexp.tasks: gaps are held-out minus train, except ratios (gap/ppl_ratio) held-out / train
            is_ratio = metric.endswith("_ratio")
            axes.axhline(1.0 if is_ratio else 0.0, color="0.5", lw=0.8)
            finish_axes(axes, f"{metric} (held-out {'/' if is_ratio else '−'} train)", metric, options)
        return figure
    (metric,) = spec.metrics
    figure, (axes,) = new_figure()
    draw_metric(axes, groups, metric, colours, options)
    if metric.endswith("loss"):
        auto_log_scale(axes)
    finish_axes(axes, metric, metric, options)
    return figure


def write_plots(
    groups: Sequence[Group],
    out_dir: Path,
    options: PlotOptions | None = None,
    advance: Callable[[], None] | None = None,
) -> list[PlotFile]:
    """Write every planned plot under ``out_dir``; returns them in report order."""
    options = options or PlotOptions()
    plots = []
    for spec in plan_plots(groups, options.per_tensor):
        target = out_dir / spec.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        render(spec, groups, options).savefig(target, dpi=110)
        plots.append(PlotFile(Path(spec.relative), spec.title))
        if advance is not None:
            advance()
    return plots
