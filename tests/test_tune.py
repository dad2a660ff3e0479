"""`memexp tune`: the study plan, selection on the validation split, edge flags and extensions,
and end to end: selection never reads the test split, a killed study resumes without re-running
finished jobs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from memexp.config import TuneConfig, TuneSearch
from memexp.errors import ConfigValueError
from memexp.tune import (
    CONFIRMATION,
    EXTENSION,
    WORST,
    Study,
    beyond_edge,
    plan_arms,
    random_points,
    seeds_of,
    trial_score,
)
from tests.conftest import memexp_env, run_memexp


def parse(*overrides: str) -> list:
    return OverridesParser.create().parse_overrides(list(overrides))


def test_arms_are_the_swept_keys_that_are_not_tuned() -> None:
    tune = TuneConfig()
    arms, fixed = plan_arms(parse("optimizer=sgd,adamw", "optimizer.lr=1e-3,1e-2", "model=cnn"), tune)
    assert [arm.label for arm in arms] == ["optimizer=sgd", "optimizer=adamw"]
    assert all(arm.space == {"optimizer.lr": [0.001, 0.01]} for arm in arms)
    assert fixed == ["model=cnn"]
    with pytest.raises(ConfigValueError, match="seed=.*tune.seeds"):
        plan_arms(parse("optimizer=sgd,adamw", "optimizer.lr=1e-3,1e-2", "seed=0,1"), tune)
    with pytest.raises(ConfigValueError, match="tune.params"):
        plan_arms(parse("optimizer=sgd,adamw"), tune)  # nothing to search


def test_a_later_override_of_a_key_replaces_the_presets_arms() -> None:
    """A preset's optimizer list, then the command line's: the command line cuts the arms (as Hydra does),
    rather than forming a second axis (arms like `optimizer=lion optimizer=sgd`)."""
    tune = TuneConfig()
    overrides = parse("optimizer=sgd,adamw,lion", "optimizer.lr=1e-3,1e-2", "optimizer=lion,adamw", "model=mlp")
    arms, fixed = plan_arms(overrides, tune)
    assert [arm.label for arm in arms] == ["optimizer=lion", "optimizer=adamw"]
    assert fixed == ["model=mlp"]
    arms, fixed = plan_arms(parse("optimizer=sgd,adamw", "optimizer.lr=1e-3,1e-2", "optimizer=adamw"), tune)
    assert [arm.overrides for arm in arms] == [[]] and fixed == ["optimizer=adamw"]


def test_per_arm_spaces_from_a_preset_and_the_command_line_wins() -> None:
    tune = TuneConfig(
        spaces={
            "optimizer=lion": {"optimizer.lr": [3e-5, 1e-4], "optimizer.weight_decay": "0.1,1.0"},
            "optimizer=adamw": {"optimizer.lr": "1e-4,1e-3", "optimizer.weight_decay": [0.0, 0.01]},
        }
    )
    arms, _ = plan_arms(parse("optimizer=lion,adamw"), tune)
    lion, adamw = arms
    assert lion.space == {"optimizer.lr": [3e-5, 1e-4], "optimizer.weight_decay": [0.1, 1.0]}
    assert adamw.space == {"optimizer.lr": [1e-4, 1e-3], "optimizer.weight_decay": [0.0, 0.01]}
    assert lion.space_source["optimizer.lr"] == "tune.spaces['optimizer=lion']"
    arms, _ = plan_arms(parse("optimizer=lion,adamw", "optimizer.lr=0.5,0.7"), tune)
    assert all(arm.space["optimizer.lr"] == [0.5, 0.7] for arm in arms)
    assert arms[0].space_source["optimizer.lr"] == "command line"
    unequal = TuneConfig(spaces={"optimizer=lion": {"optimizer.lr": [1e-4, 3e-4, 1e-3]}})
    arms, fixed = plan_arms(parse("optimizer=lion,adamw", "optimizer.weight_decay=0,0.1"), unequal)
    study = Study(unequal, arms, fixed, *seeds_of(unequal))
    with pytest.raises(ConfigValueError, match="same number of trials for every arm"):
        study.search_jobs()  # lion 3 x 2 = 6 trials, adamw 2: an unequal budget


def test_seeds_are_disjoint_and_jobs_are_numbered_in_order() -> None:
    tune = TuneConfig(seeds=2, confirm_seeds=3, seed_base=5)
    assert seeds_of(tune) == ([5, 6], [7, 8, 9])
    arms, fixed = plan_arms(parse("optimizer=sgd,adamw", "optimizer.lr=0.01,0.1"), tune)
    study = Study(tune, arms, fixed, *seeds_of(tune))
    jobs = study.search_jobs()
    assert [job.num for job in jobs] == list(range(8))
    assert jobs[0].overrides == ["optimizer=sgd", "optimizer.lr=0.01", "seed=5"]
    assert {job.seed for job in jobs} == {5, 6}


ARM = "all"


def fake_study(scores_by_lr: dict[float, float], tune: TuneConfig | None = None) -> Study:
    """A one-arm study (optimizer=sgd is fixed, so the arm is "all") whose jobs score by their lr,
    as if trained: no training."""
    tune = tune or TuneConfig(seeds=1, confirm_seeds=2, extend_edges=True, max_extensions=2)
    arms, fixed = plan_arms(parse("optimizer=sgd", "optimizer.lr=0.01,0.1,1.0"), tune)
    study = Study(tune, arms, fixed, *seeds_of(tune))

    def score(jobs: list) -> None:
        for job in jobs:
            lr = study.trials[job.trial].values["optimizer.lr"]
            study.scores[job.num] = scores_by_lr.get(lr, WORST)
            study.statuses[job.num] = "finished" if math.isfinite(scores_by_lr.get(lr, WORST)) else "diverged"

    score(study.search_jobs())
    study.select(ARM)
    for round_ in (1, 2):
        jobs = study.extension_jobs(round_)
        score(jobs)
        study.select(ARM)
    return study


def test_edge_flags_and_extensions_beyond_the_edge() -> None:
    # Best at the high edge 1.0: extended to 10.0 (geometric), which is worse: chosen 1.0, no edge.
    study = fake_study({0.01: 3.0, 0.1: 2.0, 1.0: 1.0, 10.0: 5.0})
    assert study.chosen[ARM] == {"optimizer.lr": 1.0}
    assert study.edges[ARM] == {} and study.extensions[ARM] == 1
    assert [t.values["optimizer.lr"] for t in study.trials if t.phase == EXTENSION] == [10.0]
    # Keeps improving: extended twice (10, 100), still on the edge after max_extensions -> flagged.
    study = fake_study({0.01: 3.0, 0.1: 2.0, 1.0: 1.0, 10.0: 0.5, 100.0: 0.25})
    assert study.chosen[ARM] == {"optimizer.lr": 100.0}
    assert study.edges[ARM] == {"optimizer.lr": "high"} and study.extensions[ARM] == 2
    # Interior optimum: no flag, no extension.
    study = fake_study({0.01: 3.0, 0.1: 1.0, 1.0: 2.0})
    assert study.edges[ARM] == {} and ARM not in study.extensions


def test_diverged_trials_score_worst_and_confirmation_uses_fresh_seeds() -> None:
    study = fake_study({0.001: 3.5, 0.01: 3.0, 0.1: math.inf, 1.0: math.inf})  # 0.1 and 1.0 diverge
    # 0.01 is the low edge of the grid: 0.001 is tried below it, is worse, and 0.01 stays chosen.
    assert [t.values["optimizer.lr"] for t in study.trials if t.phase == EXTENSION] == [0.001]
    assert study.chosen[ARM] == {"optimizer.lr": 0.01} and study.edges[ARM] == {}
    jobs = study.confirmation_jobs()
    assert [job.seed for job in jobs] == [1, 2] and all(job.phase == CONFIRMATION for job in jobs)
    assert jobs[0].num == len(study.jobs) - 2
    assert trial_score([1.0, math.inf]) == WORST and trial_score([1.0, 3.0]) == 2.0


def test_beyond_edge_geometric_arithmetic_and_never_across_zero() -> None:
    assert beyond_edge([1e-4, 1e-3, 1e-2], high=True) == pytest.approx(0.1)
    assert beyond_edge([1e-4, 1e-3, 1e-2], high=False) == pytest.approx(1e-5)
    assert beyond_edge([0.0, 0.01, 0.02], high=True) == pytest.approx(0.03)
    assert beyond_edge([0.0, 0.01], high=False) is None  # weight decay below 0
    assert beyond_edge([32, 64], high=True) == 128.0
    assert beyond_edge([1e-3], high=True) is None
    assert beyond_edge([1e-4, 3e-4], high=True) == 0.0009  # exactly: no float residue in the override


def test_random_search_is_deterministic_in_range_and_alike_across_arms() -> None:
    space = {"optimizer.lr": [1e-4, 1e-2], "optimizer.weight_decay": [0.0, 0.1]}
    points = random_points(space, 8, seed=0)
    assert points == random_points(space, 8, seed=0) and points != random_points(space, 8, seed=1)
    assert all(1e-4 <= p["optimizer.lr"] <= 1e-2 and 0.0 <= p["optimizer.weight_decay"] <= 0.1 for p in points)
    # log-uniform: about half of the points below the geometric midpoint 1e-3
    assert 2 <= sum(p["optimizer.lr"] < 1e-3 for p in points) <= 6
    shifted = random_points({"optimizer.lr": [1e-3, 1e-1], "optimizer.weight_decay": [0.0, 0.1]}, 8, seed=0)
    # the same unit points: every lr is exactly 10x (up to 4 significant digits)
    assert all(b["optimizer.lr"] / a["optimizer.lr"] == pytest.approx(10, rel=1e-3) for a, b in zip(points, shifted))
    tune = TuneConfig(search=TuneSearch.random, trials=5)
    arms, fixed = plan_arms(parse("optimizer=sgd,adamw", "optimizer.lr=1e-4,1e-2"), tune)
    study = Study(tune, arms, fixed, *seeds_of(tune))
    assert len(study.search_jobs()) == 2 * 5 * tune.seeds


# ----------------------------------------------------------------------------------------------
# End to end (real training on digits, a few seconds per job)

STUDY = [
    "tune",
    "optimizer=sgd,adamw",
    "optimizer.lr=0.001,0.01",
    "tune.seeds=1",
    "tune.confirm_seeds=2",
    "trainer.max_steps=30",
    "trainer.eval_every=10",
    "trainer.progress=off",
    "logger=none",
    "metrics=none",
]


def study_dir(root: Path, name: str) -> str:
    # Under <output_root>/tune/multiruns/ so that a re-run finds earlier jobs by their job keys.
    return f"hydra.sweep.dir={root / 'outputs' / 'tune' / 'multiruns' / name}"


def corrupt_test_split(run_dir: Path) -> None:
    """Replace every test/* value (and the gap built from it) with garbage, in place."""
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in list(summary):
        if key.startswith(("test/", "gap/")):
            summary[key] = 1e9
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lines = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        lines.append(json.dumps({k: (-7.0 if k.startswith(("test/", "gap/")) else v) for k, v in event.items()}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_selection_never_reads_the_test_split_and_flags_edges(tmp_path: Path) -> None:
    first = run_memexp(*STUDY, study_dir(tmp_path, "a"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    a = tmp_path / "outputs" / "tune" / "multiruns" / "a"
    tune_a = json.loads((a / "tune.json").read_text())
    sgd, adamw = tune_a["arms"]["optimizer=sgd"], tune_a["arms"]["optimizer=adamw"]
    # 30 steps of SGD with momentum: lr 0.01 beats 0.001 -> chosen at the high edge of the grid.
    assert sgd["chosen"] == {"optimizer.lr": 0.01} and sgd["edge"] == {"optimizer.lr": "high"}
    assert tune_a["confirm_seeds"] == [1, 2] and tune_a["tuning_seeds"] == [0]
    assert len(sgd["confirmation"]["run_dirs"]) == 2 and set(sgd["confirmation"]["statuses"]) == {"finished"}
    for arm in (sgd, adamw):
        for trial in arm["trials"]:
            run_dir = a / trial["seeds"][0]["run_dir"]
            summary = json.loads((run_dir / "summary.json").read_text())
            assert trial["score"] == pytest.approx(summary["val/loss"], rel=1e-12)  # the validation loss
    assert "on the high edge" in first.stderr and "optimizer.lr at the high edge" in (a / "tune.md").read_text()
    assert (a / "tune_optimizer_lr.png").is_file()

    for job_dir in a.iterdir():
        if job_dir.is_dir() and job_dir.name.isdigit():
            corrupt_test_split(job_dir)
    second = run_memexp(*STUDY, study_dir(tmp_path, "b"), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    b = tmp_path / "outputs" / "tune" / "multiruns" / "b"
    # Every job was reused from study a (its test values now garbage): tune.json is unchanged.
    assert all(
        json.loads((job / "summary.json").read_text()).get("reused_from")
        for job in b.iterdir()
        if job.is_dir() and job.name.isdigit()
    )
    assert (b / "tune.json").read_text() == (a / "tune.json").read_text()

    report = run_memexp("report", str(a), "--no-plots", "--quiet", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (a / "report" / "report.md").read_text()
    assert "confirmation runs of the tune study" in text and "optimizer=sgd (n=2)" in text


def finished_jobs(sweep: Path) -> set[str]:
    done = set()
    for job in sweep.glob("*/summary.json"):
        try:
            if json.loads(job.read_text()).get("status") == "finished":
                done.add(job.parent.name)
        except (OSError, ValueError):
            continue
    return done


def test_a_killed_study_resumes_without_rerunning_finished_jobs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "memexp"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "memexp.cli"]
    first = tmp_path / "outputs" / "tune" / "multiruns" / "killed"
    process = subprocess.Popen(
        [*command, *STUDY, study_dir(tmp_path, "killed")],
        cwd=tmp_path,
        env=memexp_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while len(finished_jobs(first)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = finished_jobs(first)
    assert 3 <= len(done_before) < 8  # killed mid-study (8 jobs: 4 search, 4 confirmation)

    resumed = run_memexp(*STUDY, study_dir(tmp_path, "resumed"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = tmp_path / "outputs" / "tune" / "multiruns" / "resumed"
    reused = {
        job.name
        for job in second.iterdir()
        if job.is_dir() and job.name.isdigit() and json.loads((job / "summary.json").read_text()).get("reused_from")
    }
    assert done_before <= reused  # every job finished before the kill was reused, not trained again
    tune = json.loads((second / "tune.json").read_text())
    assert all(len(arm["confirmation"]["run_dirs"]) == 2 for arm in tune["arms"].values())
