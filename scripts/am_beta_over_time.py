"""β_t over time for the adaptive-memory arms of a `memexp tune experiment=adaptive_memory` study
(docs/results/adaptive_memory_tuned/): read from the confirmation runs' metrics.jsonl, where the
optimizer's ``optim/beta_mean`` / ``optim/beta_min`` / ``optim/beta_max`` are logged at every log
step (the step's own β_t: one number for AM-SGD, the mean / min / max over tensors for AM-AdamW).

Writes a PNG (median over seeds with a min-max band, one panel per arm) and prints a JSON summary:
per arm its β_max, and per window of steps the mean β_t and the fraction of logged steps at the cap
(β_t within 1e-6 of β_max: there the adaptive arm takes the constant control's step).

    python scripts/am_beta_over_time.py STUDY_DIR --arms optimizer=am_sgd,optimizer=am_adamw --out beta_t.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from memexp.report.runs import load_run_dir
from memexp.report.tune_study import read_tune_study

AT_CAP = 1e-6
STATS = ("optim/beta_mean", "optim/beta_min", "optim/beta_max")


def stacked(runs: list[Any], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and a seeds × steps array of ``metric`` (steps of the first run; all share the log steps)."""
    traces = [run.history[metric] for run in runs if metric in run.history]
    if not traces:
        raise SystemExit(f"am_beta_over_time: no run logged {metric}")
    steps = traces[0].steps
    values = np.full((len(traces), steps.size), np.nan)
    for row, trace in enumerate(traces):
        common = min(trace.values.size, steps.size)
        values[row, :common] = trace.values[:common]
    return steps, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a memexp tune study dir (tune.json)")
    parser.add_argument("--arms", required=True, help="comma-separated arm labels, e.g. optimizer=am_sgd")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--windows", type=int, default=3, help="equal step windows in the JSON summary")
    args = parser.parse_args()
    study = read_tune_study(args.study)
    if study is None:
        raise SystemExit(f"am_beta_over_time: {args.study} has no tune.json")
    arms = args.arms.split(",")
    unknown = [arm for arm in arms if arm not in study.arms]
    if unknown:
        raise SystemExit(f"am_beta_over_time: arms {unknown} not in the study (allowed: {sorted(study.arms)})")

    figure = Figure(figsize=(5.0 * len(arms), 3.6), layout="constrained")
    panels = figure.subplots(1, len(arms), squeeze=False)[0]
    summary: dict[str, Any] = {}
    for axes, arm in zip(panels, arms, strict=True):
        dirs = (study.arms[arm].get("confirmation") or {}).get("run_dirs") or []
        runs = [load_run_dir(args.study / d) for d in dirs if d]
        beta_cap = float(runs[0].config["optimizer.beta_max"])
        steps, mean = stacked(runs, "optim/beta_mean")
        _, low = stacked(runs, "optim/beta_min")
        for values, style, colour, name in [
            (mean, "-", "tab:blue", "β_t (mean over tensors)" if not np.allclose(mean, low) else "β_t"),
            (low, "--", "tab:orange", "β_t, smallest tensor"),
        ]:
            if name == "β_t, smallest tensor" and np.allclose(mean, low):
                continue  # AM-SGD: one global β_t
            axes.plot(steps, np.median(values, axis=0), style, color=colour, label=f"{name}: median over seeds")
            axes.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.2, linewidth=0)
        axes.axhline(beta_cap, color="grey", linewidth=0.8, linestyle=":", label=f"β_max = {beta_cap:g}")
        lr = (study.arms[arm].get("chosen") or {}).get("optimizer.lr")
        axes.set_title(f"{arm.removeprefix('optimizer=')} (lr {lr:g}, {len(runs)} seeds, band min-max)", fontsize=9)
        axes.set_xlabel("step")
        axes.set_ylabel("β_t")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
        windows = []
        for chunk in np.array_split(np.arange(steps.size), args.windows):
            windows.append(
                {
                    "steps": [int(steps[chunk[0]]), int(steps[chunk[-1]])],
                    "beta_mean": float(mean[:, chunk].mean()),
                    "beta_min_over_tensors": float(low[:, chunk].mean()),
                    "fraction_at_cap": float((np.abs(mean[:, chunk] - beta_cap) < AT_CAP).mean()),
                    "fraction_smallest_tensor_at_cap": float((np.abs(low[:, chunk] - beta_cap) < AT_CAP).mean()),
                }
            )
        summary[arm] = {"beta_max": beta_cap, "lr": lr, "seeds": [run.seed for run in runs], "windows": windows}
    figure.savefig(args.out, dpi=110)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
