"""Orchestration overhead of `memexp tune`: everything but the runs themselves.

A study and the same jobs without tune are timed side by side, alternating, each in a fresh output
root (nothing reused):

- tune:     `memexp tune optimizer.lr=A,B tune.seeds=S tune.confirm_seeds=C ...` (search, selection,
            confirmation, tune.json/tune.md and the score plot);
- baseline: `memexp train -m optimizer.lr=A,B seed=0..S-1 ...` then `memexp train -m
            optimizer.lr=<the lr tune chose> seed=S..S+C-1 ...`: the same jobs through the same Hydra
            multirun machinery, with nothing of tune around them.

``overhead_fraction`` = (tune − baseline) / tune, from the medians over repeats (goal <= 0.05): a
difference of two wall times, so on a loaded machine it is noisy (it can come out negative).
``in_process_overhead_fraction`` is exact: the study's own accounting (tune_timing.json) of the time
spent outside the launcher's launch calls (planning, composing, scoring, selection, tune.json/tune.md
and the plot) over the study's wall time inside the process.

    python scripts/bench_tune.py [--steps 600] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The default run's settings (its economy metrics included), W&B off: jobs as a user's study has them.
COMMON = ["trainer.progress=off", "logger=none"]


def memexp(*args: str, cwd: Path) -> float:
    script = Path(sys.executable).parent / "memexp"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "memexp.cli"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    started = time.perf_counter()
    result = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"memexp {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps per job (the default run's 600)")
    parser.add_argument("--lrs", default="0.03,0.1", help="the searched learning rates")
    parser.add_argument("--seeds", type=int, default=2, help="tuning seeds per trial")
    parser.add_argument("--confirm-seeds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    steps = [f"trainer.max_steps={args.steps}", *COMMON]
    times: dict[str, list[float]] = {"tune": [], "baseline": []}
    jobs = len(args.lrs.split(",")) * args.seeds + args.confirm_seeds
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        in_process: list[float] = []
        for repeat in range(args.repeats):
            out = root / f"tune{repeat}"
            times["tune"].append(
                memexp(
                    "tune",
                    f"optimizer.lr={args.lrs}",
                    f"tune.seeds={args.seeds}",
                    f"tune.confirm_seeds={args.confirm_seeds}",
                    f"paths.output_root={out}",
                    f"hydra.sweep.dir={out}/study",
                    *steps,
                    cwd=root,
                )
            )
            chosen = json.loads((out / "study" / "tune.json").read_text())["arms"]["all"]["chosen"]["optimizer.lr"]
            timing = json.loads((out / "study" / "tune_timing.json").read_text())
            in_process.append(timing["orchestration_s"] / timing["study_s"])
            base = root / f"baseline{repeat}"
            search_seeds = ",".join(str(s) for s in range(args.seeds))
            confirm_seeds = ",".join(str(s) for s in range(args.seeds, args.seeds + args.confirm_seeds))
            started = time.perf_counter()
            memexp(
                "train", "-m", f"optimizer.lr={args.lrs}", f"seed={search_seeds}", f"paths.output_root={base}",
                f"hydra.sweep.dir={base}/search", *steps, cwd=root,
            )  # fmt: skip
            memexp(
                "train", "-m", f"optimizer.lr={chosen}", f"seed={confirm_seeds}", f"paths.output_root={base}",
                f"hydra.sweep.dir={base}/confirm", *steps, cwd=root,
            )  # fmt: skip
            times["baseline"].append(time.perf_counter() - started)
    tune, baseline = statistics.median(times["tune"]), statistics.median(times["baseline"])
    print(
        json.dumps(
            {
                "jobs": jobs,
                "steps_per_job": args.steps,
                "tune_s": [round(t, 2) for t in times["tune"]],
                "baseline_s": [round(t, 2) for t in times["baseline"]],
                "in_process_overhead_fraction": round(statistics.median(in_process), 4),
                "overhead_s": round(tune - baseline, 2),
                "overhead_fraction": round((tune - baseline) / tune, 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
