"""`memexp report --at`: readings at matched training loss or at a step, on hand-built run dirs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from memexp.cli import main as memexp_main
from memexp.errors import MemexpError
from memexp.report.reading import first_crossing, interpolate, parse_reading, read_run
from memexp.report.runs import FINISHED, NOT_REACHED, MetricTrace, load_run_dir
from tests.report.conftest import RunWriter


def events(train: list[float], test: list[float], steps: list[int]) -> list[dict[str, float]]:
    return [{"step": s, "train/loss": a, "test/loss": b, "gap/loss": b - a} for s, a, b in zip(steps, train, test)]


def test_first_crossing_and_interpolation_are_linear_between_logged_points() -> None:
    trace = MetricTrace(np.asarray([100, 200, 300]), np.asarray([0.8, 0.4, 0.2]))
    # 0.5 lies 3/4 of the way from 0.8 to 0.4: step 100 + 0.75 * 100.
    assert first_crossing(trace, 0.5) == pytest.approx(175.0, abs=1e-12)
    assert first_crossing(trace, 0.8) == 100.0  # reached at the first point
    assert first_crossing(trace, 0.1) is None  # never reached
    rising = MetricTrace(np.asarray([10, 20]), np.asarray([0.5, 0.9]))
    assert first_crossing(rising, 0.8) == pytest.approx(17.5, abs=1e-12)  # accuracies rise to a target
    assert interpolate(trace, 250) == pytest.approx(0.3, abs=1e-12)
    assert math.isnan(interpolate(trace, 50)) and math.isnan(interpolate(trace, 301))  # never extrapolated
    with_nan = MetricTrace(np.asarray([1, 2, 3]), np.asarray([1.0, math.nan, 0.0]))
    assert first_crossing(with_nan, 0.5) == pytest.approx(2.0, abs=1e-12)  # NaN points skipped


def test_parse_reading_rejects_bad_values() -> None:
    assert parse_reading("train/loss=0.5").metric == "train/loss"
    assert parse_reading("step=1000").at_step
    for bad in ("train/loss", "train/loss=abc", "=1", "step=-3", "train/loss=nan"):
        with pytest.raises(MemexpError, match="--at"):
            parse_reading(bad)


def test_read_run_reads_every_metric_at_the_crossing(tmp_path: Path, make_run: RunWriter) -> None:
    run_dir = make_run(
        tmp_path / "r",
        seed=0,
        history=events([0.8, 0.4, 0.2], [1.0, 0.6, 0.5], [100, 200, 300]),
        final={"train/loss": 0.2, "test/loss": 0.5},
    )
    read = read_run(load_run_dir(run_dir), parse_reading("train/loss=0.5"))
    assert read.status == FINISHED
    assert read.final["read_at/step"] == pytest.approx(175.0, abs=1e-12)
    assert read.final["train/loss"] == pytest.approx(0.5, abs=1e-12)
    assert read.final["test/loss"] == pytest.approx(1.0 + 0.75 * (0.6 - 1.0), abs=1e-12)  # 0.7
    assert read.final["gap/loss"] == pytest.approx(0.2, abs=1e-12)
    at_step = read_run(load_run_dir(run_dir), parse_reading("step=250"))
    assert at_step.final["test/loss"] == pytest.approx(0.55, abs=1e-12)
    late = read_run(load_run_dir(run_dir), parse_reading("step=400"))
    assert late.status == NOT_REACHED and "ended at step 300" in late.detail


def test_cli_at_lists_runs_that_never_reach_the_target_apart(tmp_path: Path, make_run: RunWriter) -> None:
    sweep = tmp_path / "sweep"
    steps = [100, 200, 300]
    # fast: train loss 0.8 -> 0.4 -> 0.2 (reaches 0.5 at step 175); slow: never below 0.6.
    for seed in (0, 1):
        make_run(
            sweep / str(seed),
            seed=seed,
            overrides={"optimizer": "fast"},
            choices={"optimizer": "fast"},
            history=events([0.8, 0.4, 0.2], [1.0 + seed, 0.6 + seed, 0.5 + seed], steps),
        )
        make_run(
            sweep / str(seed + 2),
            seed=seed,
            overrides={"optimizer": "slow"},
            choices={"optimizer": "slow"},
            history=events([0.9, 0.7, 0.6], [1.0, 0.9, 0.8], steps),
        )
    assert memexp_main(["report", str(sweep), "--at", "train/loss=0.5", "--no-plots", "--quiet"]) == 0
    rows = list(csv.DictReader((sweep / "report" / "summary.csv").open()))
    fast = next(r for r in rows if r["group"] == "optimizer=fast" and r["metric"] == "test/loss")
    assert float(fast["mean"]) == pytest.approx((0.7 + 1.7) / 2, abs=1e-9) and fast["n"] == "2"
    slow = next(r for r in rows if r["group"] == "optimizer=slow" and r["metric"] == "test/loss")
    assert slow["n"] == "0" and slow[NOT_REACHED] == "2"
    report = (sweep / "report" / "report.md").read_text()
    assert "Read where train/loss first reaches 0.5" in report and "never reaches 0.5 (best 0.6)" in report
