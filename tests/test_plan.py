"""`memexp plan`: the job list and the sbatch script of a sweep, with nothing run or written."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_memexp


def test_plan_lists_jobs_and_the_sbatch_script_and_writes_nothing(tmp_path: Path) -> None:
    result = run_memexp(
        "plan",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=30",
        "optimizer=sgd,adamw",
        "seed=0,1,2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "memexp plan: 6 jobs, launcher slurm" in out
    for optimizer in ("sgd", "adamw"):
        for seed in range(3):
            assert f"optimizer={optimizer} seed={seed}" in out
    assert "#SBATCH --array=0-5%6" in out
    assert "#SBATCH --partition=gpu" in out and "#SBATCH --time=30" in out
    assert "#SBATCH --signal=USR2@120" in out
    assert "-m submitit.core._submit" in out
    assert not (tmp_path / "outputs").exists(), "planning must not create anything"


def test_plan_says_which_jobs_a_rerun_would_reuse(tmp_path: Path) -> None:
    ran = run_memexp("train", "-m", "optimizer=sgd", "trainer=quick", "logger=none", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    [sweep] = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    key = (sweep / "0" / "job_key.txt").read_text().strip()
    plan = run_memexp("plan", "optimizer=sgd,adamw", "trainer=quick", "logger=none", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    [sgd_line] = [line for line in plan.stdout.splitlines() if "optimizer=sgd" in line]
    assert key in sgd_line and "reuse" in sgd_line
    [adamw_line] = [line for line in plan.stdout.splitlines() if "optimizer=adamw" in line]
    assert "train" in adamw_line.split("│")[-2]


def test_plan_rejects_bad_values_like_train(tmp_path: Path) -> None:
    result = run_memexp("plan", "optimizer.lr=0.1,-1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("optimizer.lr=-1.0 is not allowed: a number > 0")


def test_plan_under_the_batched_launcher_names_each_jobs_population_and_its_refusals(tmp_path: Path) -> None:
    result = run_memexp(
        "plan",
        "hydra/launcher=batched",
        "hydra.launcher.members=2",
        "seed=0,1,2",
        "model.hidden_sizes=[32],[16]",
        "trainer=quick",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = {
        cells[2]: cells[3]  # overrides -> population
        for cells in (line.split("│") for line in result.stdout.splitlines())
        if len(cells) > 4 and cells[1].strip().isdigit()
    }
    populations = {overrides.strip(): population.strip() for overrides, population in rows.items()}
    assert len(populations) == 6
    # Jobs that differ only in the seed share a population (of up to 2); other shapes never do.
    assert populations["seed=0 model.hidden_sizes=[32] trainer=quick"] == "0 (2 jobs)"
    assert populations["seed=1 model.hidden_sizes=[32] trainer=quick"] == "0 (2 jobs)"
    assert populations["seed=2 model.hidden_sizes=[32] trainer=quick"] == "1 (alone: a single run)"
    assert populations["seed=0 model.hidden_sizes=[16] trainer=quick"] == "2 (2 jobs)"
    assert "6 jobs in 4 populations of up to 2 (hydra/launcher=batched)" in result.stdout
    refused = run_memexp(
        "plan", "hydra/launcher=batched", "optimizer=am_sgd", "optimizer.offset=carried", "seed=0,1", cwd=tmp_path
    )
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("memexp: error: optimizer.offset='carried' is not allowed: one of taylor under hydra")
    assert not (tmp_path / "outputs").exists(), "planning must not create anything"
