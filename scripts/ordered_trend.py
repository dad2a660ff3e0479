"""Does a metric follow a pre-stated order of the arms? Tests on a `memexp report` runs.csv, paired by seed.

    python scripts/ordered_trend.py docs/results/adamw_beta2_tuned/report/runs.csv \
        --order optimizer.beta2=0.9 optimizer.beta2=0.95 optimizer.beta2=0.99 optimizer.beta2=0.999 \
        --metric gap/loss --metric geom/grad_l1

Prints JSON, per metric, over the seeds that have a run in every arm (a `--at` report leaves out
runs that never reached the reading point):
- ``page``: Page's L test for an increasing trend along ``--order`` (one-sided; seeds are blocks);
- ``slope``: per seed, the least-squares slope of the metric on the arm's position 0, 1, 2, ...; the
  mean slope with its 95% t-interval and the two-sided one-sample t p-value;
- ``adjacent``: each next-minus-previous arm, paired over seeds (mean, 95% t-interval, two-sided
  paired t p) with Holm-adjusted p-values over the adjacent tests of that metric;
- ``monotone_increasing``: every adjacent difference positive with Holm p < 0.05.
The adjustment is memexp's (memexp.report.stats.holm_adjust), the t-test and interval too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from memexp.report.render import read_runs_matrix
from memexp.report.stats import estimate, holm_adjust, paired_t

ALPHA = 0.05


def interval(values: np.ndarray) -> dict[str, float]:
    e = estimate(list(values))
    return {"mean": e.mean, "ci_low": e.ci_low, "ci_high": e.ci_high}


def trend(path: Path, order: list[str], metric: str) -> dict[str, object]:
    seeds, table = read_runs_matrix(path, order, metric)
    out: dict[str, object] = {"n_seeds": len(seeds), "seeds": seeds}
    if len(seeds) < 2:
        out["error"] = "fewer than 2 seeds with a value in every arm"
        return out
    out["arm_means"] = dict(zip(order, table.mean(axis=0).tolist()))
    page = scipy_stats.page_trend_test(table, method="auto")  # columns in the predicted increasing order
    out["page"] = {"L": float(page.statistic), "p_one_sided_increasing": float(page.pvalue), "method": page.method}
    positions = np.arange(len(order), dtype=float)
    centred = positions - positions.mean()
    slopes = table @ centred / (centred @ centred)
    _, slope_p = paired_t(slopes)
    out["slope"] = {**interval(slopes), "t_pvalue": slope_p}
    adjacent = []
    for left, right in zip(range(len(order) - 1), range(1, len(order))):
        differences = table[:, right] - table[:, left]
        _, p = paired_t(differences)
        adjacent.append({"pair": f"{order[right]} - {order[left]}", **interval(differences), "t_pvalue": p})
    for item, adjusted in zip(adjacent, holm_adjust([a["t_pvalue"] for a in adjacent]), strict=True):
        item["t_pvalue_holm"] = adjusted
        item["holm_family_size"] = len(adjacent)
    out["adjacent"] = adjacent
    out["monotone_increasing"] = all(a["mean"] > 0 and a["t_pvalue_holm"] < ALPHA for a in adjacent)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_csv", type=Path)
    parser.add_argument("--order", nargs="+", required=True, help="the report's group labels, predicted increasing")
    parser.add_argument("--metric", action="append", required=True)
    args = parser.parse_args(argv)
    if not args.runs_csv.is_file():
        print(f"ordered_trend: error: runs_csv={args.runs_csv} is not allowed: a runs.csv file", file=sys.stderr)
        return 2
    if len(args.order) < 3:
        print(f"ordered_trend: error: --order={args.order} is not allowed: at least 3 groups", file=sys.stderr)
        return 2
    result = {metric: trend(args.runs_csv, args.order, metric) for metric in args.metric}
    print(json.dumps({"runs_csv": str(args.runs_csv), "order": args.order, "metrics": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
