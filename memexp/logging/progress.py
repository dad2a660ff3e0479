"""Progress display: a rich bar on a terminal, plain periodic lines otherwise (CI, Slurm logs),
and the final results table."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from memexp.config import Progress as ProgressMode
from memexp.splits import HELD_OUT_SPLIT, SPLIT_LABELS, SPLITS


class ProgressReporter:
    """Updated at log steps only, so it costs nothing on the other steps."""

    def __init__(self, total: int, mode: ProgressMode, start: int = 0) -> None:
        if mode is ProgressMode.auto:
            mode = ProgressMode.rich if sys.stdout.isatty() else ProgressMode.plain
        self.mode, self.total, self.start_step = mode, total, start
        self.started = time.perf_counter()
        self._bar: Progress | None = None
        if mode is ProgressMode.rich:
            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[rate]} it/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                refresh_per_second=4,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, loss="-", lr="-", rate="-")
            self._bar.start()

    def update(self, step: int, loss: float, lr: float) -> None:
        elapsed = time.perf_counter() - self.started
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.3g}", rate=f"{rate:.1f}")
        elif self.mode is ProgressMode.plain:
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.3g}  {rate:.1f} it/s  eta {eta:.0f}s",
                flush=True,
            )

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.mode is not ProgressMode.off:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def print_summary_table(summary: dict[str, Any]) -> None:
    table = Table(title=f"memexp run: {summary.get('status', '?')}")
    table.add_column("metric")
    for split in SPLITS:
        table.add_column(SPLIT_LABELS[split], justify="right")
    table.add_column("gap (test - train)", justify="right")
    metrics = sorted({key.split("/", 1)[1] for key in summary if key.startswith(f"{HELD_OUT_SPLIT}/")})
    for metric in metrics:
        cells = [summary.get(f"{split}/{metric}") for split in SPLITS]
        gap = summary.get(f"gap/{metric}", summary.get(f"gap/{metric}_ratio"))
        table.add_row(metric, *(f"{cell:.4f}" if isinstance(cell, float) else "-" for cell in [*cells, gap]))
    table.caption = (
        f"steps {summary.get('step', '?')}  wall time {summary.get('wall_time_s', 0.0):.1f}s  "
        f"run dir {summary.get('run_dir', '?')}"
    )
    Console().print(table)
    print_geometry_table(summary)


# The geom/* scalars shown under the results table, in this order (memexp.metrics; per-tensor values
# and diagnostics stay in metrics.jsonl / W&B).
GEOMETRY_ROWS = (
    ("geom/grad_l2sq", "|grad L|_2^2 (probe set)"),
    ("geom/grad_l1", "|grad L|_1 (probe set)"),
    ("geom/correction", "implicit correction term"),
    ("geom/correction_sign", "correction sign (+1 regularizing)"),
    ("geom/correction_ratio", "twin correction / plain step"),
    ("geom/sharpness", "sharpness (top Hessian eigenvalue)"),
    ("geom/sharpness_precond", "preconditioned sharpness"),
    ("geom/hessian_trace", "Hessian trace (Hutchinson)"),
    ("geom/r_med", "R_med, memexp summary: median over weight tensors"),
    ("geom/lion_linf_lambda", "max |x| * lambda"),
    ("geom/lion_saturation", "fraction |x| * lambda > 0.99"),
    ("geom/am_beta", "adaptive-memory beta_t (mean)"),
    ("geom/weight_norm", "weight norm"),
    ("geom/update_ratio", "update / weight norm"),
)


def print_geometry_table(summary: dict[str, Any]) -> None:
    rows = [(label, summary[key]) for key, label in GEOMETRY_ROWS if isinstance(summary.get(key), int | float)]
    if not rows:
        return
    table = Table(title=f"implicit regularization and geometry at step {summary.get('step', '?')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in rows:
        table.add_row(label, f"{value:.4g}")
    Console().print(table)
