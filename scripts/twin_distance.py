"""Does the memoryless-corrected twin track its original on a real mini-batch run? The tables, tests
and plot of a `memexp tune experiment=twin_distance` study (docs/results/twin_distance/), read from
the run dirs' metrics.jsonl only (``trainer.twin=true trainer.twin_uncorrected=true`` logs
``twin/distance`` and ``twin/distance_uncorrected`` at every log step; memexp/twin.py).

1. Confirmation runs (each arm's tuned lr, fresh seeds): per seed, the corrected twin's distance to
   the run vs the uncorrected memoryless copy's, at the last log step and averaged over all log
   steps. Paired test per arm on log(corrected / uncorrected): the Wilcoxon signed-rank test
   (two-sided, exact for n <= 16) and the paired t-test; Holm over the arms' end-of-run Wilcoxon
   tests (the family is every arm of every study passed). A copy that diverged (nan) counts as
   infinitely far: its log ratio is +inf (corrected diverged) or -inf (uncorrected diverged); the
   signed-rank test keeps its ranks, the t-test is then undefined (nan).
2. Search runs (every lr of the grid, the tuning seeds): the distance at a fixed time T = n·h, the
   horizon of the theory (docs/memory_theory.md: O(h²) with the correction, O(h) without), with
   T = (last step) × (smallest lr), read by log-linear interpolation between log steps at n = T/h for
   each lr whose n lies within the logged steps; the least-squares slope of log distance vs log h.
3. A PNG per study: distance vs step, median over the confirmation seeds with a min-max band,
   corrected (solid) vs uncorrected (dashed), one panel per arm; with ``--scaling`` also
   scaling.png: the distance at the fixed time vs h, log-log.

    python scripts/twin_distance.py STUDY_DIR [STUDY_DIR ...] --out docs/results/twin_distance \
        [--scaling SWEEP_DIR ...]

``--scaling``: multirun dirs of `memexp train -m experiment=twin_distance optimizer.lr=a,b,c,...` (any
other swept keys: optimizer, trainer.batch_size), tabulated like 2., one table per (optimizer, batch
size), e.g. small lrs in factors of 2 and full batch vs mini-batches.

Prints the JSON it writes to OUT/twin_distance.json; OUT/twin_distance.md holds the tables.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from memexp.report.runs import DIVERGED, FINISHED, MetricTrace, RunRecord, find_runs, load_run_dir
from memexp.report.stats import holm_adjust, paired_t, wilcoxon_signed_rank
from memexp.report.tune_study import read_tune_study

CORRECTED, UNCORRECTED = "twin/distance", "twin/distance_uncorrected"
REL_CORRECTED, REL_UNCORRECTED = "twin/rel_distance", "twin/rel_distance_uncorrected"


@dataclass
class Study:
    name: str  # the study dir's name, or --names
    arms: dict[str, list[RunRecord]]  # arm label -> confirmation runs
    search: dict[str, list[RunRecord]]  # arm label -> search runs (every lr, tuning seeds)
    chosen: dict[str, dict[str, Any]]  # arm label -> chosen values


def load_study(path: Path, name: str) -> Study:
    study = read_tune_study(path)
    if study is None:
        raise SystemExit(f"twin_distance: {path} has no tune.json (pass a `memexp tune` study dir)")
    arms: dict[str, list[RunRecord]] = {}
    search: dict[str, list[RunRecord]] = {}
    chosen: dict[str, dict[str, Any]] = {}
    for label, arm in study.arms.items():
        chosen[label] = arm.get("chosen") or {}
        confirmation = (arm.get("confirmation") or {}).get("run_dirs") or []
        arms[label] = [load_run_dir(path / run_dir) for run_dir in confirmation if run_dir]
        search[label] = [
            load_run_dir(path / seed["run_dir"])
            for trial in arm.get("trials") or []
            for seed in trial.get("seeds") or []
            if seed.get("run_dir")
        ]
    return Study(name, arms, search, chosen)


def last_value(trace: MetricTrace | None) -> float:
    """The last logged value; nan (a diverged copy logs nan from then on) counts as infinitely far."""
    if trace is None or trace.values.size == 0:
        return math.nan
    value = float(trace.values[-1])
    return math.inf if math.isnan(value) else value


def mean_value(trace: MetricTrace | None) -> float:
    if trace is None or trace.values.size == 0:
        return math.nan
    return math.inf if np.isnan(trace.values).any() else float(np.mean(trace.values))


def log_ratio(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b):
        return math.nan  # both diverged: no ordering
    if math.isinf(a):
        return math.inf
    if math.isinf(b):
        return -math.inf
    return math.log(a / b)


def paired_test(ratios: list[float]) -> dict[str, Any]:
    """Corrected vs uncorrected over seeds from the log ratios (negative: the corrected twin is closer).
    The Wilcoxon signed-rank test needs only the ranks of |log ratio|, which stay defined when a copy
    diverged (±inf ranks above every finite value), so it is the test every arm has; the paired t-test
    is reported where no copy diverged."""
    values = np.asarray([r for r in ratios if not math.isnan(r)], dtype=np.float64)
    finite = bool(np.isfinite(values).all())
    t_stat, t_p = paired_t(values) if finite else (math.nan, math.nan)
    ranked = values.copy()
    if not finite:  # same ranks: every infinite ratio just above the largest finite magnitude
        largest = float(np.abs(values[np.isfinite(values)]).max(initial=0.0))
        ranked[np.isinf(values)] = np.sign(values[np.isinf(values)]) * (largest + 1.0)
    _, w_p = wilcoxon_signed_rank(ranked)
    return {
        "n": int(values.size),
        "corrected_closer": int((values < 0).sum()),
        "diverged_corrected": int((values == math.inf).sum()),
        "diverged_uncorrected": int((values == -math.inf).sum()),
        "geometric_mean_ratio": float(np.exp(values.mean())) if finite and values.size else None,
        "median_ratio": float(np.exp(np.median(values))) if values.size else None,
        "ratio_min": float(np.exp(values.min())) if values.size else None,
        "ratio_max": float(np.exp(values.max())) if values.size else None,
        "t_statistic": t_stat,
        "t_pvalue": t_p,
        "wilcoxon_pvalue": w_p,
    }


def confirmation_table(study: Study) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, runs in study.arms.items():
        per_seed = []
        for run in runs:
            end_c, end_u = last_value(run.history.get(CORRECTED)), last_value(run.history.get(UNCORRECTED))
            mean_c, mean_u = mean_value(run.history.get(CORRECTED)), mean_value(run.history.get(UNCORRECTED))
            per_seed.append(
                {
                    "seed": run.seed,
                    "status": run.status,
                    "end_corrected": end_c,
                    "end_uncorrected": end_u,
                    "end_rel_corrected": last_value(run.history.get(REL_CORRECTED)),
                    "end_rel_uncorrected": last_value(run.history.get(REL_UNCORRECTED)),
                    "mean_corrected": mean_c,
                    "mean_uncorrected": mean_u,
                    "end_loss_diff": last_value(run.history.get("twin/loss_diff")),
                    "run_dir": run.source,
                }
            )
        out[label] = {
            "chosen": study.chosen.get(label),
            "per_seed": per_seed,
            "end": paired_test([log_ratio(s["end_corrected"], s["end_uncorrected"]) for s in per_seed]),
            "mean_over_time": paired_test([log_ratio(s["mean_corrected"], s["mean_uncorrected"]) for s in per_seed]),
        }
    return out


def value_at(trace: MetricTrace | None, step: float) -> float:
    """Log-linear interpolation of a positive trace at ``step``; nan outside the logged steps or
    where the copy has diverged by then."""
    if trace is None or trace.steps.size == 0 or not trace.steps[0] <= step <= trace.steps[-1]:
        return math.nan
    steps, values = trace.steps.astype(np.float64), trace.values
    upper = int(np.searchsorted(steps, step))
    if steps[upper] == step:
        return float(values[upper])
    lower = upper - 1
    a, b = values[lower], values[upper]
    if not (a > 0 and b > 0):
        return math.nan
    weight = (step - steps[lower]) / (steps[upper] - steps[lower])
    return float(math.exp((1 - weight) * math.log(a) + weight * math.log(b)))


def slope(hs: list[float], distances: list[float]) -> float | None:
    pairs = [(math.log(h), math.log(d)) for h, d in zip(hs, distances, strict=True) if d > 0 and math.isfinite(d)]
    if len(pairs) < 2:
        return None
    x, y = np.asarray(pairs).T
    return float(np.polyfit(x, y, 1)[0])


def scaling_of(runs: list[RunRecord]) -> dict[str, Any]:
    """Distance at the fixed time T = (last logged step of the smallest lr) × (smallest lr), per lr."""
    by_lr: dict[float, list[RunRecord]] = {}
    for run in runs:
        if CORRECTED in run.history:
            by_lr.setdefault(float(run.config["optimizer.lr"]), []).append(run)
    lrs = sorted(by_lr)
    last_step = min(int(run.history[CORRECTED].steps[-1]) for run in by_lr[lrs[0]])
    horizon = last_step * lrs[0]
    rows = []
    for lr in lrs:
        step = horizon / lr
        corrected = [value_at(run.history.get(CORRECTED), step) for run in by_lr[lr]]
        uncorrected = [value_at(run.history.get(UNCORRECTED), step) for run in by_lr[lr]]
        rows.append(
            {
                "lr": lr,
                "step": step,
                "seeds": [run.seed for run in by_lr[lr]],
                "corrected": corrected,
                "uncorrected": uncorrected,
                "corrected_mean": mean_or_nan(corrected),
                "uncorrected_mean": mean_or_nan(uncorrected),
            }
        )
    usable = [r for r in rows if math.isfinite(r["corrected_mean"]) and math.isfinite(r["uncorrected_mean"])]
    return {
        "horizon_T": horizon,
        "rows": rows,
        "slope_corrected": slope([r["lr"] for r in usable], [r["corrected_mean"] for r in usable]),
        "slope_uncorrected": slope([r["lr"] for r in usable], [r["uncorrected_mean"] for r in usable]),
        "lrs_in_slope": [r["lr"] for r in usable],
        "per_seed_slopes": per_seed_slopes(rows),
        "smallest_lr": paired_test([log_ratio(c, u) for c, u in zip(rows[0]["corrected"], rows[0]["uncorrected"])]),
    }


def per_seed_slopes(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each seed's own log-log slopes over every lr (seeds that ran every lr, with every distance
    finite), and the paired test of slope corrected − slope uncorrected (theory: 2 − 1 = 1 > 0)."""
    seeds = set(rows[0]["seeds"]).intersection(*(row["seeds"] for row in rows))
    slopes = []
    for seed in sorted(seeds):
        corrected = [row["corrected"][row["seeds"].index(seed)] for row in rows]
        uncorrected = [row["uncorrected"][row["seeds"].index(seed)] for row in rows]
        if all(math.isfinite(d) and d > 0 for d in corrected + uncorrected):
            lrs = [row["lr"] for row in rows]
            slopes.append({"seed": seed, "corrected": slope(lrs, corrected), "uncorrected": slope(lrs, uncorrected)})
    differences = np.asarray([s["corrected"] - s["uncorrected"] for s in slopes], dtype=np.float64)
    _, t_p = paired_t(differences)
    _, w_p = wilcoxon_signed_rank(differences)
    # the theory's exponent for the corrected twin: is each seed's slope below 2?
    below_two = np.asarray([s["corrected"] - 2.0 for s in slopes], dtype=np.float64)
    return {
        "corrected_minus_2_wilcoxon_pvalue": wilcoxon_signed_rank(below_two)[1],
        "corrected_min": min((s["corrected"] for s in slopes), default=None),
        "corrected_max": max((s["corrected"] for s in slopes), default=None),
        "seeds": slopes,
        "n": len(slopes),
        "mean_corrected": float(np.mean([s["corrected"] for s in slopes])) if slopes else None,
        "mean_uncorrected": float(np.mean([s["uncorrected"] for s in slopes])) if slopes else None,
        "mean_difference": float(differences.mean()) if slopes else None,
        "t_pvalue": t_p,
        "wilcoxon_pvalue": w_p,
    }


def lr_scaling(study: Study) -> dict[str, Any]:
    return {label: scaling_of(runs) for label, runs in study.search.items() if runs}


# Overrides that scripts/twin_scaling.sh sets for every run or per lr: never part of a sweep's label.
SCALING_KEYS = frozenset(
    {"optimizer", "optimizer.lr", "trainer.batch_size", "trainer.max_steps", "trainer.eval_every", "trainer.log_every"}
    | {"seed", "experiment", "size", "logger", "trainer.progress"}
)


def scaling_sweeps(paths: list[Path]) -> dict[str, Any]:
    """Sweeps over optimizer.lr: one scaling table per (optimizer, batch size, any other override
    such as optimizer.eps=0.5)."""
    groups: dict[str, list[RunRecord]] = {}
    for run in find_runs(paths):
        if run.status in (FINISHED, DIVERGED):
            others = [f"{key}={value}" for key, value in sorted(run.overrides.items()) if key not in SCALING_KEYS]
            label = " ".join(
                [f"optimizer={run.setting('optimizer')}", f"batch_size={run.setting('trainer.batch_size')}", *others]
            )
            groups.setdefault(label, []).append(run)
    return {label: scaling_of(runs) for label, runs in sorted(groups.items())}


def median_of(values: list[float]) -> float:
    """The median with a diverged copy (nan or inf) ranked above every finite value."""
    return float(np.median([math.inf if math.isnan(v) else v for v in values])) if values else math.nan


def mean_or_nan(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if len(finite) == len(values) and finite else math.nan


def plot(study: Study, path: Path) -> None:
    labels = list(study.arms)
    figure = Figure(figsize=(4.0 * len(labels), 3.4), layout="constrained")
    panels = figure.subplots(1, len(labels), squeeze=False)[0]
    for axes, label in zip(panels, labels, strict=True):
        for metric, style, colour, name in [
            (CORRECTED, "-", "tab:blue", "corrected twin"),
            (UNCORRECTED, "--", "tab:red", "uncorrected copy"),
        ]:
            traces = [run.history[metric] for run in study.arms[label] if metric in run.history]
            if not traces:
                continue
            steps = traces[0].steps
            stacked = np.full((len(traces), steps.size), np.nan)
            for row, trace in enumerate(traces):
                common = min(trace.values.size, steps.size)
                stacked[row, :common] = trace.values[:common]
            with np.errstate(all="ignore"):
                finite = np.where(np.isfinite(stacked), stacked, np.nan)
                median = np.nanmedian(finite, axis=0) if np.isfinite(finite).any() else finite[0]
                low, high = np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)
            axes.plot(steps, median, style, color=colour, label=f"{name} (median of the finite)")
            axes.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
            diverged = int(np.isnan(stacked[:, -1]).sum())
            if diverged:
                axes.plot([], [], " ", label=f"{name}: {diverged}/{len(traces)} diverged")
        chosen = ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in (study.chosen.get(label) or {}).items())
        axes.set_title(f"{label.removeprefix('optimizer=')} ({chosen})", fontsize=9)
        axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_ylabel("‖θ − θ̃‖")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(f"{study.name}: distance to the run, {len(next(iter(study.arms.values())))} seeds, band min-max")
    figure.savefig(path, dpi=110)


def plot_scaling(sweeps: dict[str, Any], path: Path) -> None:
    """Distance at the fixed time T vs h, log-log, one panel per optimizer (and any other override of
    the sweep, e.g. optimizer.eps): corrected (solid) and uncorrected (dashed), one colour per batch
    size, each seed a dot; the theory's slopes 2 and 1 as grey guides through the first batch size's
    corrected / uncorrected means at the smallest h."""
    by_optimizer: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for label, scaling in sweeps.items():
        optimizer, batch, *others = label.split(" ")  # one panel per optimizer and other overrides
        panel = " ".join([optimizer.removeprefix("optimizer="), *others])
        by_optimizer.setdefault(panel, []).append((batch, scaling))
    figure = Figure(figsize=(4.2 * len(by_optimizer), 3.6), layout="constrained")
    panels = figure.subplots(1, len(by_optimizer), squeeze=False)[0]
    colours = ["tab:blue", "tab:red", "tab:green", "tab:purple"]
    for axes, (optimizer, groups) in zip(panels, sorted(by_optimizer.items()), strict=True):
        for colour, (batch, scaling) in zip(colours, sorted(groups), strict=False):
            lrs = np.asarray([row["lr"] for row in scaling["rows"]])
            for key, style in [("corrected", "-"), ("uncorrected", "--")]:
                means = np.asarray([row[f"{key}_mean"] for row in scaling["rows"]])
                axes.plot(lrs, means, style, color=colour, marker="o", markersize=3, label=f"{key}, {batch}")
                for row in scaling["rows"]:
                    finite = [d for d in row[key] if math.isfinite(d)]
                    axes.plot([row["lr"]] * len(finite), finite, ".", color=colour, alpha=0.3, markersize=3)
        guide = sorted(groups, key=lambda group: group[0])[0][1]  # the first batch size's sweep
        first = guide["rows"][0]
        h = np.asarray([row["lr"] for row in guide["rows"]])
        for power, key in [(2, "corrected_mean"), (1, "uncorrected_mean")]:
            if math.isfinite(first[key]) and first[key] > 0:
                axes.plot(h, first[key] * (h / h[0]) ** power, ":", color="grey", linewidth=0.8)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())  # the 2-3 minor labels of a short log axis collide
        axes.set_title(f"{optimizer}: distance at T = {groups[0][1]['horizon_T']:.3g} (grey: slopes 2, 1)", fontsize=9)
        axes.set_xlabel("h (lr)")
        axes.set_ylabel("‖θ − θ̃‖ at T")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=6)
    figure.savefig(path, dpi=110)


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3g}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| study | arm | lr | n | corrected closer at the end | diverged: corrected / uncorrected "
        "| distance/‖θ‖ at the end, median: corrected / uncorrected | ratio corrected/uncorrected: median [min, max] "
        "| Wilcoxon p | Holm | paired t p (log ratio) | corrected closer, time mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, study in result["studies"].items():
        for label, arm in study["confirmation"].items():
            end, mean = arm["end"], arm["mean_over_time"]
            lr = (arm["chosen"] or {}).get("optimizer.lr")
            rel_c = median_of([s["end_rel_corrected"] for s in arm["per_seed"]])
            rel_u = median_of([s["end_rel_uncorrected"] for s in arm["per_seed"]])
            lines.append(
                f"| {name} | {label.removeprefix('optimizer=')} | {fmt(lr)} | {end['n']} "
                f"| {end['corrected_closer']}/{end['n']} | {end['diverged_corrected']} / {end['diverged_uncorrected']} "
                f"| {fmt(rel_c)} / {fmt(rel_u)} "
                f"| {fmt(end['median_ratio'])} [{fmt(end['ratio_min'])}, {fmt(end['ratio_max'])}] "
                f"| {fmt(end['wilcoxon_pvalue'])} | {fmt(end['wilcoxon_pvalue_holm'])} | {fmt(end['t_pvalue'])} "
                f"| {mean['corrected_closer']}/{mean['n']} |"
            )
    lines += [
        "",
        "Distance at a fixed time T = n·h (search runs, mean over tuning seeds), and the log-log slope over h:",
        "",
        "| study | arm | T | lr: corrected / uncorrected distance | slope corrected | slope uncorrected |",
        "|---|---|---|---|---|---|",
    ]
    scalings = [
        (name, label, scaling)
        for name, study in result["studies"].items()
        for label, scaling in study["lr_scaling"].items()
    ]
    scalings += [("scaling sweep", label, scaling) for label, scaling in result["scaling_sweeps"].items()]
    for name, label, scaling in scalings:
        cells = "; ".join(
            f"{row['lr']:g} (n={row['step']:.0f}): {fmt(row['corrected_mean'])} / {fmt(row['uncorrected_mean'])}"
            for row in scaling["rows"]
        )
        lines.append(
            f"| {name} | {label.removeprefix('optimizer=')} | {scaling['horizon_T']:.3g} | {cells} "
            f"| {fmt(scaling['slope_corrected'])} | {fmt(scaling['slope_uncorrected'])} |"
        )
    if result["scaling_sweeps"]:
        lines += [
            "",
            "Scaling sweeps, per seed: each seed's slopes over the lrs (mean over seeds), the paired test of slope "
            "corrected − uncorrected, and corrected vs uncorrected distance at the smallest lr (Holm over the sweeps' "
            "slope tests):",
            "",
            "| arm | seeds with every distance finite | slope corrected [min, max] | slope uncorrected | difference "
            "| Wilcoxon p | Holm | paired t p | corrected slope vs 2: Wilcoxon p | smallest lr: corrected closer "
            "| ratio median | Wilcoxon p |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, scaling in result["scaling_sweeps"].items():
            seeds, small = scaling["per_seed_slopes"], scaling["smallest_lr"]
            lines.append(
                f"| {label.removeprefix('optimizer=')} | {seeds['n']} | {fmt(seeds['mean_corrected'])} "
                f"[{fmt(seeds['corrected_min'])}, {fmt(seeds['corrected_max'])}] "
                f"| {fmt(seeds['mean_uncorrected'])} | {fmt(seeds['mean_difference'])} "
                f"| {fmt(seeds['wilcoxon_pvalue'])} | {fmt(seeds.get('wilcoxon_pvalue_holm'))} "
                f"| {fmt(seeds['t_pvalue'])} | {fmt(seeds['corrected_minus_2_wilcoxon_pvalue'])} "
                f"| {small['corrected_closer']}/{small['n']} | {fmt(small['median_ratio'])} "
                f"| {fmt(small['wilcoxon_pvalue'])} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", type=Path, help="memexp tune study dirs (experiment=twin_distance)")
    parser.add_argument(
        "--scaling", nargs="*", type=Path, default=[], help="multirun dirs sweeping optimizer.lr (fixed-T tables only)"
    )
    parser.add_argument("--names", help="comma-separated names for the studies (default: the dirs' names)")
    parser.add_argument("--out", type=Path, required=True, help="where twin_distance.{json,md} and the PNGs go")
    args = parser.parse_args()
    names = args.names.split(",") if args.names else [path.name for path in args.studies]
    if len(names) != len(args.studies):
        raise SystemExit(f"twin_distance: --names has {len(names)} names for {len(args.studies)} studies")
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"studies": {}}
    for path, name in zip(args.studies, names, strict=True):
        study = load_study(path, name)
        result["studies"][name] = {
            "path": str(path),
            "confirmation": confirmation_table(study),
            "lr_scaling": lr_scaling(study),
        }
        plot(study, args.out / f"distance_{name}.png")
    # Holm over every end-of-run signed-rank test made (every arm of every study): one family.
    tests = [arm["end"] for study in result["studies"].values() for arm in study["confirmation"].values()]
    for test, adjusted in zip(tests, holm_adjust([t["wilcoxon_pvalue"] for t in tests]), strict=True):
        test["wilcoxon_pvalue_holm"] = adjusted
    result["holm_family_size"] = sum(math.isfinite(t["wilcoxon_pvalue"]) for t in tests)
    result["scaling_sweeps"] = scaling_sweeps(args.scaling) if args.scaling else {}
    if result["scaling_sweeps"]:
        plot_scaling(result["scaling_sweeps"], args.out / "scaling.png")
    slope_tests = [scaling["per_seed_slopes"] for scaling in result["scaling_sweeps"].values()]
    for test, adjusted in zip(slope_tests, holm_adjust([t["wilcoxon_pvalue"] for t in slope_tests]), strict=True):
        test["wilcoxon_pvalue_holm"] = adjusted
    text = json.dumps(result, indent=1, default=str)
    (args.out / "twin_distance.json").write_text(text + "\n")
    (args.out / "twin_distance.md").write_text(markdown(result))
    print(text)


if __name__ == "__main__":
    main()
