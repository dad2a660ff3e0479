"""How long `memexp report` takes on a large synthetic sweep: reading the runs, the statistics, the
plots. Prints JSON. Usage: python scripts/bench_report.py [--groups 4] [--seeds 5] [--steps 5000]"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from memexp.report.aggregate import build_report
from memexp.report.grouping import group_runs
from memexp.report.plots import write_plots
from memexp.report.runs import find_runs


def write_sweep(root: Path, groups: int, seeds: int, steps: int, geom_metrics: int, eval_every: int) -> int:
    rng = np.random.default_rng(0)
    runs = 0
    for g in range(groups):
        for seed in range(seeds):
            run_dir = root / str(runs)
            (run_dir / ".hydra").mkdir(parents=True)
            overrides = [f"optimizer=opt{g}", f"seed={seed}"]
            (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
            (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "optimizer": {"lr": 0.1}}))
            (run_dir / ".hydra" / "hydra.yaml").write_text(
                yaml.safe_dump({"hydra": {"runtime": {"choices": {"optimizer": f"opt{g}"}}}})
            )
            lines = []
            for step in range(10, steps + 1, 10):
                loss = 2.0 * math.exp(-step / steps * (1 + g)) + 0.01 * rng.random()
                lines.append(json.dumps({"step": step, "train/batch_loss": loss, "lr": 0.1, "epoch": step / 100}))
                if step % eval_every == 0:
                    event = {
                        "step": step,
                        "train/loss": loss,
                        "val/loss": loss * 1.1,
                        "train/acc": 1 - loss / 3,
                        "val/acc": 1 - loss / 2.5,
                        "gap/loss": loss * 0.1,
                        "gap/acc": -loss / 15,
                    }
                    event.update({f"geom/m{i}": loss * i for i in range(geom_metrics)})
                    lines.append(json.dumps(event))
            (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            final = json.loads(lines[-1])
            summary = {
                "status": "finished",
                "step": steps,
                "max_steps": steps,
                "wall_time_s": 1.0,
                **{k: v for k, v in final.items() if k.startswith(("train/", "val/", "gap/"))},
            }
            (run_dir / "summary.json").write_text(json.dumps(summary))
            runs += 1
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--geom-metrics", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sweep"
        runs = write_sweep(root, args.groups, args.seeds, args.steps, args.geom_metrics, args.eval_every)
        size_mb = sum(p.stat().st_size for p in root.rglob("metrics.jsonl")) / 1e6
        started = time.perf_counter()
        records = find_runs([root])
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        keys, groups = group_runs(records)
        report = build_report(keys, groups)
        stats_s = time.perf_counter() - started
        started = time.perf_counter()
        plots = write_plots(groups, Path(tmp) / "report")
        plots_s = time.perf_counter() - started
    print(
        json.dumps(
            {
                "runs": runs,
                "metrics_jsonl_mb": round(size_mb, 1),
                "events_per_run": args.steps // 10 + args.steps // args.eval_every,
                "comparisons": len(report.comparisons),
                "plots": len(plots),
                "read_s": round(read_s, 2),
                "read_ms_per_run": round(1000 * read_s / runs, 1),
                "stats_s": round(stats_s, 3),
                "plots_s": round(plots_s, 2),
                "plot_ms_each": round(1000 * plots_s / len(plots)),
            }
        )
    )


if __name__ == "__main__":
    main()
