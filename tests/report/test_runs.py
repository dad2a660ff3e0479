"""Reading run dirs and sweeps, including everything a crashed or killed run leaves behind."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from memexp.errors import MemexpError
from memexp.report.runs import (
    DIVERGED,
    FAILED,
    FINISHED,
    INCOMPLETE,
    MISSING,
    expected_jobs,
    find_runs,
    load_run_dir,
)
from tests.report.conftest import RunWriter, curve_history, write_multirun_yaml


def test_finished_run_final_metrics_and_history(tmp_path: Path, make_run: RunWriter) -> None:
    history = curve_history(2.0, 1.0, geom=4.0)
    run = load_run_dir(
        make_run(
            tmp_path / "r",
            seed=3,
            final={"train/loss": 1.0, "test/loss": 1.1, "gap/loss": 0.1, "lr": 0.1},
            history=history,
        )
    )
    assert (run.status, run.seed, run.step, run.max_steps) == (FINISHED, 3, 20, 20)
    # summary's train/val/gap and wall time; the last logged value of everything else namespaced (geom,
    # and the acc metrics this summary lacks); never lr or the batch loss
    assert run.final == {
        "train/loss": 1.0,
        "test/loss": 1.1,
        "gap/loss": 0.1,
        "wall_time_s": 1.0,
        "geom/sharpness": 4.0,
        "train/acc": 0.9,
        "test/acc": pytest.approx(0.85, abs=1e-12),
        "gap/acc": pytest.approx(-0.05, abs=1e-12),
    }
    assert run.history["train/loss"].steps.tolist() == [10, 20]
    assert run.history["train/loss"].values.tolist() == [1.5, 1.0]
    assert run.setting("optimizer") == "sgd" and run.setting("optimizer.lr") == "0.1"


def test_resumed_run_replayed_steps_keep_the_last_value_and_nan_strings_parse(
    tmp_path: Path, make_run: RunWriter
) -> None:
    events = [
        {"step": 5, "train/batch_loss": 2.0},
        {"step": 10, "train/batch_loss": 1.5},
        {"step": 5, "train/batch_loss": 1.9},
        {"step": 10, "train/batch_loss": "nan"},
    ]
    run = load_run_dir(make_run(tmp_path / "r", seed=0, status=DIVERGED, history=events))
    trace = run.history["train/batch_loss"]
    assert trace.steps.tolist() == [5, 10]
    assert trace.values[0] == 1.9 and math.isnan(trace.values[1])
    assert run.status == DIVERGED and "non-finite loss" in run.detail and "step 10/20" in run.detail


def test_truncated_metrics_line_is_skipped_and_reported(tmp_path: Path, make_run: RunWriter) -> None:
    run_dir = make_run(tmp_path / "r", seed=0, status="running", history=curve_history(2.0, 1.0))
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 30, "train/batch_lo')  # killed mid-write
    run = load_run_dir(run_dir)
    assert run.status == INCOMPLETE
    assert "still running, or killed" in run.detail and "skipped unreadable line(s) [5]" in run.detail
    assert run.history["train/loss"].values.tolist() == [1.5, 1.0]


@pytest.mark.parametrize(
    ("status", "summary_text", "expected_status", "expected_detail"),
    [
        (None, None, INCOMPLETE, "no summary.json (metrics.jsonl stops at step 20)"),
        ("failed", None, FAILED, "RuntimeError: CUDA out of memory at step 20/20"),
        ("finished", "{not json", INCOMPLETE, "summary.json unreadable: JSONDecodeError"),
        ("finished", "[1, 2]", INCOMPLETE, "summary.json unreadable: not a JSON object"),
        ("paused", None, INCOMPLETE, "unknown status 'paused'"),
    ],
)
def test_broken_runs_get_a_status_and_a_reason(
    tmp_path: Path,
    make_run: RunWriter,
    status: str | None,
    summary_text: str | None,
    expected_status: str,
    expected_detail: str,
) -> None:
    run_dir = make_run(
        tmp_path / "r", seed=1, status=status, history=curve_history(2.0, 1.0), error="RuntimeError: CUDA out of memory"
    )
    if summary_text is not None:
        (run_dir / "summary.json").write_text(summary_text)
    run = load_run_dir(run_dir)
    assert run.status == expected_status
    assert expected_detail in run.detail


def test_expected_jobs_match_hydras_basic_sweeper(tmp_path: Path) -> None:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = ["optimizer=sgd,adamw", "seed=range(0,3)", "trainer=quick", "+extra.flag=true"]
    write_multirun_yaml(tmp_path, task)
    (reference,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task), None)
    jobs = expected_jobs(tmp_path / "multirun.yaml")
    assert jobs == reference and len(jobs) == 6
    # Hydra writes a non-swept value back in its own spelling (True), and so does overrides.yaml
    assert jobs[0] == ["optimizer=sgd", "seed=0", "trainer=quick", "+extra.flag=True"]


def test_sweep_with_missing_and_extra_jobs(tmp_path: Path, make_run: RunWriter) -> None:
    sweep = tmp_path / "sweep"
    write_multirun_yaml(sweep, ["optimizer=sgd,adamw", "seed=0,1"])
    for num, (optimizer, seed) in enumerate([("sgd", 0), ("sgd", 1), ("adamw", 1)]):
        make_run(
            sweep / str(num),
            seed=seed,
            overrides={"optimizer": optimizer},
            choices={"optimizer": optimizer},
            history=curve_history(2.0, 1.0),
        )
    (sweep / "report").mkdir()  # an earlier report is not a run
    runs = find_runs([sweep])
    assert [r.status for r in runs] == [FINISHED, FINISHED, FINISHED, MISSING]
    missing = runs[-1]
    assert (missing.seed, missing.overrides, missing.setting("optimizer")) == (
        0,
        {"optimizer": "adamw", "seed": "0"},
        "adamw",
    )
    assert "optimizer=adamw seed=0" in missing.source


def test_missing_job_joins_the_group_of_its_other_seeds(tmp_path: Path, make_run: RunWriter) -> None:
    # Typed "optimizer.lr=1000" on the command line; the composed (float-typed) config holds 1000.0.
    write_multirun_yaml(tmp_path, ["optimizer.lr=1000", "seed=0,1"])
    make_run(tmp_path / "0", seed=0, overrides={"optimizer.lr": "1000"}, config={"optimizer": {"lr": 1000.0}})
    runs = find_runs([tmp_path])
    assert [r.status for r in runs] == [FINISHED, MISSING]
    assert runs[0].setting("optimizer.lr") == runs[1].setting("optimizer.lr") == "1000.0"
    assert runs[1].seed == 1 and runs[1].config["seed"] == 1


def test_nested_dirs_are_searched_and_sorted_numerically(tmp_path: Path, make_run: RunWriter) -> None:
    for num in (10, 2, 1):
        make_run(tmp_path / "a" / "multiruns" / str(num), seed=num)
    runs = find_runs([tmp_path, tmp_path / "a"])  # the same runs twice count once
    assert [r.seed for r in runs] == [1, 2, 10]


def test_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(MemexpError, match="PATH '.*nope' is not a directory"):
        find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemexpError, match="holds no runs"):
        find_runs([tmp_path / "empty"])


def test_history_arrays_are_numpy(tmp_path: Path, make_run: RunWriter) -> None:
    run = load_run_dir(make_run(tmp_path / "r", seed=0, history=curve_history(1.0, 0.5)))
    assert run.history["test/acc"].values.dtype == np.float64
