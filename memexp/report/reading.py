"""Where a run's metrics are read: at the end (the default), at a step, or at matched fit.

Comparing optimizers at the end of equal budgets mixes two things: how well each arm fits the
training data and how it generalizes at that fit. ``memexp report --at train/loss=0.5`` reads every
metric of every run at the first point where that run's training loss reaches 0.5, so arms are
compared at the same degree of fit; ``--at step=N`` reads them at a step.

Metrics are logged at discrete steps, so a reading between two logged points is a linear
interpolation of the two (stated in the report). The crossing point of the target metric is
interpolated the same way: if ``train/loss`` is 0.8 at step 100 and 0.4 at step 200, the target 0.5
is reached at step 175, and ``test/loss`` is read at step 175 between its values at 100 and 200.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from memexp.errors import MemexpError
from memexp.report.runs import BOOKKEEPING_KEYS, FINISHED, NOT_REACHED, MetricTrace, RunRecord


@dataclass(frozen=True)
class Reading:
    """``metric=value``: read at the first point where ``metric`` reaches ``value`` (going down for
    losses, up for accuracies: the direction is the one the metric moves in from its first logged
    value); ``step=N``: read at step N."""

    metric: str  # "step" or a logged metric such as "train/loss"
    value: float

    @property
    def at_step(self) -> bool:
        return self.metric == "step"

    def describe(self) -> str:
        if self.at_step:
            return f"read at step {self.value:g} (linear interpolation between logged points)"
        return (
            f"read where {self.metric} first reaches {self.value:g} (matched fit; each run's crossing step and "
            "every metric at it by linear interpolation between logged points)"
        )


def parse_reading(text: str) -> Reading:
    """``train/loss=0.5`` or ``step=1000`` (the value of ``--at``)."""
    metric, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not metric or not math.isfinite(number):
        raise MemexpError(f"--at={text!r} is not allowed: METRIC=VALUE (e.g. train/loss=0.5) or step=N")
    if metric == "step" and number < 0:
        raise MemexpError(f"--at={text!r} is not allowed: step=N needs N >= 0")
    return Reading(metric, number)


def interpolate(trace: MetricTrace, step: float) -> float:
    """The trace's value at ``step``: exact at a logged step, linear between two, NaN outside the
    logged range (never extrapolated)."""
    steps, values = trace.steps.astype(np.float64), trace.values
    if steps.size == 0 or step < steps[0] or step > steps[-1]:
        return math.nan
    return float(np.interp(step, steps, values))


def first_crossing(trace: MetricTrace, target: float, decreasing: bool | None = None) -> float | None:
    """The first (interpolated) step where the trace reaches ``target``: falls to it when
    ``decreasing`` (the default for a trace that starts above the target), rises to it otherwise.
    None when it never does. Non-finite points are skipped (a diverged run's last values)."""
    finite = np.isfinite(trace.values)
    steps, values = trace.steps[finite].astype(np.float64), trace.values[finite]
    if values.size == 0:
        return None
    if decreasing is None:
        decreasing = bool(values[0] >= target)
    reached = values <= target if decreasing else values >= target
    if not reached.any():
        return None
    index = int(np.argmax(reached))
    if index == 0:
        return float(steps[0])
    s0, s1, v0, v1 = steps[index - 1], steps[index], values[index - 1], values[index]
    return float(s0 + (target - v0) / (v1 - v0) * (s1 - s0))


def read_run(run: RunRecord, reading: Reading) -> RunRecord:
    """The run with ``final`` replaced by every logged metric read at the reading's point (plus
    ``read_at/step``, the step it was read at). A finished run whose target metric never reaches the
    value comes back with status ``not reached`` and the reason, so it is listed apart."""
    if run.status != FINISHED:
        return run
    if reading.at_step:
        step: float | None = reading.value
        if run.step is not None and reading.value > run.step:
            return replace(run, status=NOT_REACHED, detail=f"ended at step {run.step} < {reading.value:g}")
    else:
        trace = run.history.get(reading.metric)
        if trace is None:
            return replace(run, status=NOT_REACHED, detail=f"{reading.metric} was never logged")
        step = first_crossing(trace, reading.value)
        if step is None:
            best = np.nanmin(trace.values) if trace.values.size else math.nan
            return replace(
                run, status=NOT_REACHED, detail=f"{reading.metric} never reaches {reading.value:g} (best {best:.4g})"
            )
    assert step is not None
    final = {
        name: interpolate(trace, step)
        for name, trace in run.history.items()
        if "/" in name and name not in BOOKKEEPING_KEYS
    }
    final = {name: value for name, value in final.items() if math.isfinite(value)}
    final["read_at/step"] = step
    return replace(run, final=final)
