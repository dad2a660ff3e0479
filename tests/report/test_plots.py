"""The numbers behind the plots: a group's mean curve and its seed band at every step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memexp.report.grouping import Group
from memexp.report.plots import group_curve
from memexp.report.runs import DIVERGED, FINISHED, MetricTrace, RunRecord
from memexp.report.stats import Band


def run(seed: int, steps: list[int], values: list[float], status: str = FINISHED) -> RunRecord:
    trace = MetricTrace(np.asarray(steps), np.asarray(values, dtype=np.float64))
    return RunRecord(source=f"r{seed}", status=status, seed=seed, history={"test/loss": trace})


# Seeds 0-2 log steps 10 and 20; seed 2 stops logging after step 10 (a shorter schedule); a diverged
# run's values must not enter the mean.
GROUP = Group(
    label="optimizer=sgd",
    settings={"optimizer": "sgd"},
    runs=[
        run(0, [10, 20], [1.0, 0.5]),
        run(1, [10, 20], [2.0, 0.7]),
        run(2, [10], [3.0]),
        run(3, [10, 20], [100.0, math.nan], status=DIVERGED),
    ],
)


@pytest.mark.parametrize(
    ("band", "low", "high"),
    [
        (Band.std, [1.0, 0.6 - math.sqrt(0.02)], [3.0, 0.6 + math.sqrt(0.02)]),
        (Band.minmax, [1.0, 0.5], [3.0, 0.7]),
        # t(0.975, 2) = 0.95 / sqrt(2 * 0.975 * 0.025); t(0.975, 1) = tan(0.475 pi)
        (
            Band.ci,
            [2.0 - 0.95 / math.sqrt(0.04875) / math.sqrt(3), 0.6 - math.tan(0.475 * math.pi) * 0.1],
            [2.0 + 0.95 / math.sqrt(0.04875) / math.sqrt(3), 0.6 + math.tan(0.475 * math.pi) * 0.1],
        ),
    ],
)
def test_group_curve_mean_and_band_by_hand(band: Band, low: list[float], high: list[float]) -> None:
    curve = group_curve(GROUP, "test/loss", band, 0.95)
    assert curve is not None
    assert curve.steps.tolist() == [10.0, 20.0]
    assert curve.mean == pytest.approx([2.0, 0.6], rel=1e-12)  # step 20: seeds 0 and 1 only
    assert curve.low == pytest.approx(low, rel=1e-10)
    assert curve.high == pytest.approx(high, rel=1e-10)


def test_single_seed_has_no_band_and_unlogged_metric_no_curve() -> None:
    group = Group(label="g", settings={}, runs=[run(0, [5], [0.25])])
    curve = group_curve(group, "test/loss", Band.std, 0.95)
    assert curve is not None and curve.low.tolist() == curve.high.tolist() == [0.25]
    assert group_curve(group, "geom/sharpness", Band.std, 0.95) is None


def test_legend_names_every_group_and_diverged_runs_once() -> None:
    from memexp.report.plots import DIVERGED_LABEL, PlotOptions, PlotSpec, render

    def two_split_run(seed: int, status: str, values: list[float]) -> RunRecord:
        steps = np.asarray([10, 20])
        history = {
            split: MetricTrace(steps, np.asarray(values, dtype=np.float64)) for split in ("train/loss", "test/loss")
        }
        return RunRecord(source=f"r{seed}", status=status, seed=seed, history=history)

    sgd = Group("optimizer=sgd", {}, [two_split_run(0, FINISHED, [1.0, 0.5]), two_split_run(1, FINISHED, [1.2, 0.6])])
    blown_runs = [two_split_run(0, DIVERGED, [3.0, math.nan]), two_split_run(1, DIVERGED, [4.0, math.inf])]
    blown = Group("optimizer.lr=1000", {}, blown_runs)
    spec = PlotSpec("split", ["train/loss", "test/loss"], "loss_curves.png", "loss")
    figure = render(spec, [blown, sgd], PlotOptions())
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert labels == [
        "optimizer.lr=1000: no finished run (2 diverged)",
        DIVERGED_LABEL,
        "optimizer=sgd train (n=2)",
        "optimizer=sgd test (held-out) (n=2)",
    ]
