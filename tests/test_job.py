"""memexp.job: the sweep `memexp train -m` reports on is composed before Hydra runs (no state is
carried out of Hydra), and the report counts the jobs that never ran."""

from __future__ import annotations

import json
from pathlib import Path

from memexp.config import register_configs
from memexp.job import pin_sweep
from tests.conftest import run_memexp


def test_pin_sweep_fixes_the_sweep_dir_and_counts_the_jobs() -> None:
    register_configs()  # as main() does first
    argv, sweep_dir, expected = pin_sweep(["-m", "optimizer=sgd,adamw", "seed=0,1,2"])
    assert expected == 6
    assert str(sweep_dir).startswith("outputs/train/multiruns/")
    assert argv == ["-m", "optimizer=sgd,adamw", "seed=0,1,2", f"hydra.sweep.dir='{sweep_dir}'"]
    # A sweep dir given on the command line is used as it is; the preset's sweeper params count too.
    argv, sweep_dir, expected = pin_sweep(["-m", "experiment=lion_vs_adamw", "size=tiny", "hydra.sweep.dir=/x/y"])
    assert (argv[-1], sweep_dir, expected) == ("hydra.sweep.dir=/x/y", Path("/x/y"), 9)
    assert pin_sweep(["optimizer=sgd"]) is None  # a single run: no sweep to report
    assert pin_sweep(["-m", "--cfg", "job", "seed=0,1"]) is None  # prints the config, runs nothing


def test_the_sweep_report_counts_a_job_that_never_ran_and_exits_non_zero(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    result = run_memexp(
        "train", "-m", "optimizer.lr=0.1,-1", "trainer=quick", "logger=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("optimizer.lr=-1.0 is not allowed: a number > 0")
    assert "1 finished, 1 missing" in result.stdout
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "finished"
    assert not (sweep / "1").exists(), "a job stopped by bad input leaves nothing behind"
