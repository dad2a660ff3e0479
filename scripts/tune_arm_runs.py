"""The confirmation run dirs of chosen arms of a `memexp tune` study, one per line, so that
`memexp report` can compare a subset of the arms (one family of a preset, with the Holm family
being that subset's comparisons only):

    memexp report $(python scripts/tune_arm_runs.py STUDY_DIR optimizer=am_sgd optimizer=am_sgd_constant) \
        --group-by optimizer --baseline optimizer=am_sgd --out REPORT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from memexp.report.tune_study import read_tune_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a memexp tune study dir (holds tune.json)")
    parser.add_argument("arms", nargs="+", help="arm labels as in tune.json, e.g. optimizer=am_sgd")
    args = parser.parse_args()
    study = read_tune_study(args.study)
    if study is None:
        raise SystemExit(f"tune_arm_runs: {args.study} has no tune.json (pass a memexp tune study dir)")
    unknown = [arm for arm in args.arms if arm not in study.arms]
    if unknown:
        raise SystemExit(f"tune_arm_runs: arms {unknown} are not in the study (allowed: {sorted(study.arms)})")
    for arm in args.arms:
        for run_dir in (study.arms[arm].get("confirmation") or {}).get("run_dirs") or []:
            if run_dir:
                print(args.study / run_dir)


if __name__ == "__main__":
    main()
