"""Per-layer R_med of a tuned AdamW-vs-SGD study at fixed steps AND at matched training loss, paired
over seeds, with Holm-adjusted p-values (docs/results/sections/rmed.md).

An exact R_med pass costs minutes on a CPU, so it is measured at a few steps only; `memexp report
--at train/loss=X` would interpolate R_med linearly between those steps. Instead the matched-fit
value is MEASURED at each run's own crossing step (training runs are deterministic per seed, and
metrics never change a trajectory, so a re-run retraces the confirmation run exactly):

1. ``plan``: from a `memexp tune` study's confirmation runs, each run's crossing step (the first
   evaluation at which train/loss <= ``--target``), and the `memexp train` command that re-runs it with
   R_med at ``--steps`` plus that step (``--shell``: the commands, one per line)::

       python scripts/rmed_at_fit.py plan STUDY --target 2.6 --steps 100,200 --out RERUNS \\
           --extra metrics.tier=economy metrics.include=[r_med] > plan.json

2. ``read``: the per-tensor ``geom/r_med/*`` of the runs under the given dirs at each fixed step and at
   the crossing step from the plan; A − B paired over seeds (t-interval, paired t p, Wilcoxon p) and
   Holm's adjustment over every test printed (tensors x readings)::

       python scripts/rmed_at_fit.py read RERUNS --plan plan.json --steps 100,200 [--markdown]

A study whose runs log R_med at every evaluation needs no re-run: ``read`` the study dir itself (a dir
with a tune.json contributes its confirmation runs only).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from memexp.report.stats import estimate, holm_adjust, paired_t, wilcoxon_signed_rank
from memexp.rundir import TUNE_JSON

R_MED_PREFIX = "geom/r_med/"


def overrides_of(run_dir: Path) -> dict[str, str]:
    lines = (run_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
    pairs = [line.removeprefix("- ").split("=", 1) for line in lines if "=" in line]
    return {key.strip(): value.strip() for key, value in pairs}


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def series(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {int(row["step"]): float(row[key]) for row in rows if key in row}


def crossing_step(train_loss: dict[int, float], target: float) -> int | None:
    """The first logged step at which the training loss is at or below ``target``."""
    return next((step for step in sorted(train_loss) if train_loss[step] <= target), None)


def last_per_key(overrides: list[str]) -> list[str]:
    """Each key once, at its last value (Hydra rejects a key given twice): the re-run's R_med
    settings replace the study's own."""
    by_key = {override.split("=", 1)[0]: override for override in overrides}
    return list(by_key.values())


def plan(args: argparse.Namespace) -> None:
    study = json.loads((args.study / TUNE_JSON).read_text())
    fixed = [o for o in study["fixed_overrides"] if not o.startswith("task_name=")]
    steps = [int(s) for s in args.steps.split(",")] if args.steps else []
    runs, commands = [], []
    for label, arm in study["arms"].items():
        chosen = [f"{key}={value}" for key, value in arm["chosen"].items()]
        for seed, run_name in zip(arm["confirmation"]["seeds"], arm["confirmation"]["run_dirs"]):
            train_loss = series(records(args.study / str(run_name)), "train/loss")
            step = crossing_step(train_loss, args.target)
            r_med_steps = sorted(set(steps) | ({step} if step is not None else set()))
            out_dir = args.out / f"{label.replace('=', '_')}_seed{seed}" if args.out else None
            overrides = [
                *fixed,
                *arm["overrides"],
                *chosen,
                f"seed={seed}",
                *args.extra,
                f"metrics.r_med_at_steps=[{','.join(map(str, r_med_steps))}]",
            ]
            command = ["memexp", "train", *last_per_key(overrides)]
            if out_dir is not None:
                command.append(f"hydra.run.dir={out_dir}")
            runs.append(
                {
                    "arm": label,
                    "seed": seed,
                    "run_dir": str(args.study / str(run_name)),
                    "min_train_loss": min(train_loss.values()),
                    "final_train_loss": train_loss[max(train_loss)],
                    "crossing_step": step,
                    "r_med_steps": r_med_steps,
                    "command": command,
                }
            )
            commands.append(shlex.join(command))
    if args.shell:
        print("\n".join(commands))
        return
    reached = [r for r in runs if r["crossing_step"] is not None]
    print(
        json.dumps(
            {
                "study": str(args.study),
                "target_train_loss": args.target,
                "largest_min_train_loss": max(r["min_train_loss"] for r in runs),
                "runs_reaching_target": f"{len(reached)}/{len(runs)}",
                "runs": runs,
            },
            indent=2,
        )
    )


def read(args: argparse.Namespace) -> None:
    plan_data = json.loads(args.plan.read_text()) if args.plan else None
    crossing = {(r["arm"], int(r["seed"])): r["crossing_step"] for r in plan_data["runs"]} if plan_data else {}
    steps = [int(s) for s in args.steps.split(",")] if args.steps else []
    group_a, group_b = args.pair.split(",")
    # values[reading][tensor][group][seed]; fit[reading][group][seed] = train/loss there
    values: dict[str, dict[str, dict[str, dict[int, float]]]] = {}
    fit: dict[str, dict[str, dict[int, float]]] = {}
    readings = [f"step={s}" for s in steps] + ([f"train/loss<={plan_data['target_train_loss']:g}"] if plan_data else [])
    for run_dir in run_dirs(args.paths):
        overrides = overrides_of(run_dir)
        group, seed = overrides.get(args.group_by), int(overrides.get("seed", -1))
        if group not in (group_a, group_b):
            continue
        rows = records(run_dir)
        train_loss = series(rows, "train/loss")
        tensors = sorted({key for row in rows for key in row if key.startswith(R_MED_PREFIX)})
        matched = crossing.get((f"{args.group_by}={group}", seed)) if plan_data else None
        for reading, step in [*zip(readings, steps), *([(readings[-1], matched)] if plan_data else [])]:
            if step is None:
                continue  # never reached the target: listed apart
            for tensor in tensors:
                at = series(rows, tensor)
                if step not in at:
                    sys.exit(f"rmed_at_fit: {run_dir} has no {tensor} at step {step} (measured at {sorted(at)})")
                values.setdefault(reading, {}).setdefault(tensor, {}).setdefault(group, {})[seed] = at[step]
            fit.setdefault(reading, {}).setdefault(group, {})[seed] = train_loss.get(step, math.nan)
    tests = []
    for reading in readings:
        for tensor, groups in values.get(reading, {}).items():
            a, b = groups.get(group_a, {}), groups.get(group_b, {})
            seeds = sorted(set(a) & set(b))
            differences = np.array([a[s] - b[s] for s in seeds])
            t_stat, t_p = paired_t(differences)
            _, w_p = wilcoxon_signed_rank(differences)
            diff = estimate(differences.tolist())
            fa, fb = fit[reading].get(group_a, {}), fit[reading].get(group_b, {})
            tests.append(
                {
                    "reading": reading,
                    "tensor": tensor.removeprefix(R_MED_PREFIX),
                    "n": len(seeds),
                    group_a: summary(list(a.values())),
                    group_b: summary(list(b.values())),
                    f"{group_a}_values": [a[s] for s in seeds],
                    f"{group_b}_values": [b[s] for s in seeds],
                    "median_difference": float(np.median(differences)) if seeds else math.nan,
                    "train_loss": {group_a: summary(list(fa.values())), group_b: summary(list(fb.values()))},
                    "difference": {"mean": diff.mean, "low": diff.ci_low, "high": diff.ci_high},
                    "t_pvalue": t_p,
                    "wilcoxon_pvalue": w_p,
                }
            )
    # Holm over the study's R_med tests, for each test statistic. The signed-rank test is also defined
    # where a run's R_med is inf (median |H_ii| = 0: dead units), where the t-test is not.
    for kind in ("t", "wilcoxon"):
        pvalues = [t[f"{kind}_pvalue"] for t in tests]
        for test, adjusted in zip(tests, holm_adjust(pvalues), strict=True):
            test[f"{kind}_pvalue_holm"] = adjusted
            test[f"{kind}_family_size"] = sum(math.isfinite(p) for p in pvalues)
        for test in tests:
            test["infinite_runs"] = {
                g: sum(not math.isfinite(v) for v in test[f"{g}_values"]) for g in (group_a, group_b)
            }
    result = {"pair": f"{group_a} - {group_b}", "readings": readings, "tests": tests}
    print(markdown(result, group_a, group_b) if args.markdown else json.dumps(result, indent=2))


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run dirs under ``paths``; a `memexp tune` study dir contributes its confirmation runs only."""
    found: list[Path] = []
    for root in paths:
        if (root / TUNE_JSON).exists():
            study = json.loads((root / TUNE_JSON).read_text())
            found += [root / str(name) for arm in study["arms"].values() for name in arm["confirmation"]["run_dirs"]]
        else:
            found += [metrics_file.parent for metrics_file in sorted(root.rglob("metrics.jsonl"))]
    return found


def summary(values: list[float]) -> dict[str, float]:
    e = estimate(values)
    return {"n": e.n, "mean": e.mean, "std": e.std}


def markdown(result: dict[str, Any], group_a: str, group_b: str) -> str:
    lines = [
        f"| reading | tensor | n | {group_a} R_med (median) | {group_b} R_med (median) "
        f"| {group_a} − {group_b} [95% CI] | median diff | paired t p (Holm) | Wilcoxon p (Holm) "
        f"| inf runs {group_a}/{group_b} "
        f"| train/loss {group_a} / {group_b} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result["tests"]:
        d, fit, inf = t["difference"], t["train_loss"], t["infinite_runs"]
        lines.append(
            f"| {t['reading']} | {t['tensor']} | {t['n']} | {np.median(t[f'{group_a}_values']):.4g} | "
            f"{np.median(t[f'{group_b}_values']):.4g} | {d['mean']:.3g} [{d['low']:.3g}, {d['high']:.3g}] | "
            f"{t['median_difference']:.3g} | {t['t_pvalue']:.2g} ({t['t_pvalue_holm']:.2g}) | "
            f"{t['wilcoxon_pvalue']:.2g} ({t['wilcoxon_pvalue_holm']:.2g}) | {inf[group_a]}/{inf[group_b]} | "
            f"{fit[group_a]['mean']:.3g} / {fit[group_b]['mean']:.3g} |"
        )
    family = result["tests"][0]["t_family_size"] if result["tests"] else 0
    lines.append(
        f"\nHolm over the {family} defined t-tests and, separately, over the Wilcoxon tests of this table; "
        "the mean difference and its t-interval are over the seeds where both values are finite."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="crossing steps and re-run commands from a tune study")
    p.add_argument("study", type=Path)
    p.add_argument("--target", type=float, required=True, help="the matched training loss X")
    p.add_argument("--steps", default="", help="fixed R_med steps, comma-separated")
    p.add_argument("--out", type=Path, help="where the re-runs go (one dir per run)")
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every re-run")
    p.add_argument("--shell", action="store_true", help="print the commands, one per line")
    r = sub.add_parser("read", help="R_med per tensor at the fixed steps and the crossing step, paired")
    r.add_argument("paths", nargs="+", type=Path)
    r.add_argument("--plan", type=Path, help="the plan's JSON (for the matched-fit reading)")
    r.add_argument("--steps", default="", help="fixed steps, comma-separated")
    r.add_argument("--group-by", default="optimizer")
    r.add_argument("--pair", default="adamw,sgd", help="A,B: the difference is A − B")
    r.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    plan(args) if args.command == "plan" else read(args)


if __name__ == "__main__":
    main()
