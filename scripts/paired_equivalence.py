"""Paired equivalence and one-sided tests of two groups of a `memexp report` runs.csv, by seed.

    python scripts/paired_equivalence.py docs/results/lion_box_tuned/report/runs.csv \
        --a optimizer=lion --b optimizer=projected_adam --metric train/loss --margin 0.01

Prints JSON for d = A − B over the seeds both groups have: the mean, its 95% t-interval and the
90% one (the TOST interval), and
- ``tost``: the two one-sided paired t-tests of H0: d ≤ −margin and H0: d ≥ +margin; ``p`` is the
  larger of the two (equivalence within ±margin is shown when p < 0.05);
- ``greater`` / ``less``: the one-sided paired t p-values of d > 0 and d < 0;
- ``two_sided``: the two-sided paired t p-value (memexp.report.stats.paired_t, as `memexp report`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from memexp.report.render import read_runs_matrix
from memexp.report.stats import estimate, paired_t


def paired_values(path: Path, a: str, b: str, metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    seeds, matrix = read_runs_matrix(path, [a, b], metric)
    return seeds, matrix[:, 0] if seeds else np.array([]), matrix[:, 1] if seeds else np.array([])


def one_sided(differences: np.ndarray, shift: float, alternative: str) -> float:
    """p of the one-sample t-test of mean(differences) against ``shift`` (``greater`` or ``less``)."""
    return float(scipy_stats.ttest_1samp(differences, shift, alternative=alternative).pvalue)


def compare(path: Path, a: str, b: str, metric: str, margin: float) -> dict[str, object]:
    seeds, values_a, values_b = paired_values(path, a, b, metric)
    out: dict[str, object] = {"a": a, "b": b, "metric": metric, "n": len(seeds), "seeds": seeds}
    if len(seeds) < 2:
        out["error"] = "fewer than 2 seeds in both groups"
        return out
    d = values_a - values_b
    wide, narrow = estimate(list(d), 0.95), estimate(list(d), 0.90)
    out.update(
        mean_a=float(values_a.mean()),
        mean_b=float(values_b.mean()),
        mean_diff=wide.mean,
        ci95=[wide.ci_low, wide.ci_high],
        ci90=[narrow.ci_low, narrow.ci_high],
        two_sided=paired_t(d)[1],
        greater=one_sided(d, 0.0, "greater"),
        less=one_sided(d, 0.0, "less"),
    )
    p_above_lower, p_below_upper = one_sided(d, -margin, "greater"), one_sided(d, margin, "less")
    out["tost"] = {"margin": margin, "p_lower": p_above_lower, "p_upper": p_below_upper}
    out["tost"]["p"] = max(p_above_lower, p_below_upper)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_csv", type=Path)
    parser.add_argument("--a", required=True, help="a group label of the report (the minuend)")
    parser.add_argument("--b", required=True, help="a group label of the report (the subtrahend)")
    parser.add_argument("--metric", action="append", required=True)
    parser.add_argument("--margin", type=float, default=0.0, help="the equivalence margin (> 0 for a TOST)")
    args = parser.parse_args(argv)
    if not args.runs_csv.is_file():
        print(f"paired_equivalence: error: runs_csv={args.runs_csv} is not allowed: a runs.csv file", file=sys.stderr)
        return 2
    if not args.margin >= 0:
        print(f"paired_equivalence: error: --margin={args.margin} is not allowed: a number >= 0", file=sys.stderr)
        return 2
    results = [compare(args.runs_csv, args.a, args.b, metric, args.margin) for metric in args.metric]
    print(json.dumps({"runs_csv": str(args.runs_csv), "comparisons": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
