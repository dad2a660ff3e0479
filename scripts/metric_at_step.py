"""A logged metric at chosen steps, per group of a sweep, over seeds: the values `memexp report`
does not tabulate (it takes each metric's *last* value, which under a cosine schedule ending at
lr = 0 makes every lr-proportional metric, such as the memory correction term, exactly 0).

Reads every run dir under the given paths (a run dir holds ``metrics.jsonl`` and
``.hydra/overrides.yaml``), groups runs by the value of ``--group-by`` in their overrides, and prints
one JSON object: per group and step, the per-seed values, their mean, min and max.

    python scripts/metric_at_step.py SWEEP_DIR --metric geom/correction_sign --steps 100,200
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def overrides_of(run_dir: Path) -> dict[str, str]:
    lines = (run_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
    pairs = [line.removeprefix("- ").split("=", 1) for line in lines if "=" in line]
    return {key.strip(): value.strip() for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--metric", required=True, help="a key of metrics.jsonl, e.g. geom/correction_sign")
    parser.add_argument("--steps", required=True, help="comma-separated steps, e.g. 100,200")
    parser.add_argument("--group-by", default="optimizer", help="override key that names a group")
    args = parser.parse_args()
    steps = [int(step) for step in args.steps.split(",")]
    values: dict[str, dict[int, dict[str, float]]] = {}
    for root in args.paths:
        for metrics_file in sorted(root.rglob("metrics.jsonl")):
            overrides = overrides_of(metrics_file.parent)
            group, seed = overrides.get(args.group_by, "?"), overrides.get("seed", "?")
            for line in metrics_file.read_text().splitlines():
                record = json.loads(line)
                if record.get("step") in steps and args.metric in record:
                    values.setdefault(group, {}).setdefault(record["step"], {})[seed] = record[args.metric]
    result = {
        "metric": args.metric,
        "groups": {
            group: {
                str(step): {
                    "per_seed": per_seed,
                    "n": len(per_seed),
                    "mean": statistics.fmean(per_seed.values()),
                    "min": min(per_seed.values()),
                    "max": max(per_seed.values()),
                }
                for step, per_seed in sorted(by_step.items())
            }
            for group, by_step in sorted(values.items())
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
