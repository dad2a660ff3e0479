"""Against a REAL Slurm (one node on this machine; `.ci/run` starts it with
../shared/slurm/start-local.sh): a 2-job sweep through the submitit launcher, and a job that is
sent the preemption signal mid-run, requeued, resumed from its checkpoint, and ends with the same
final metrics as an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import memexp_env, run_memexp


def slurm_is_up() -> str | None:
    """None when a Slurm node answers, else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (run bash ../shared/slurm/start-local.sh)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15).stdout.split()
    except (subprocess.TimeoutExpired, OSError) as error:
        return f"sinfo failed: {error}"
    if not any(state.rstrip("*") in ("idle", "mixed", "allocated") for state in states):
        return f"no usable Slurm node (sinfo states: {states or 'none'}); start one with start-local.sh"
    return None


SKIP_REASON = slurm_is_up()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=f"Slurm unavailable: {SKIP_REASON}")

SLURM = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1"]


def job_state(job_id: str) -> dict[str, str]:
    # No sacct here: `scontrol show job` answers for MinJobAge after the end.
    text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in text.split() if "=" in field)


def test_a_tune_study_through_the_slurm_launcher(tmp_path: Path) -> None:
    """memexp tune launches its phases (search, then confirmation) as Slurm array jobs and reads
    their run dirs back: the same selection as the basic launcher makes (tests/test_tune.py)."""
    study = tmp_path / "study"
    result = run_memexp(
        "tune",
        *SLURM,
        "optimizer.lr=0.01,0.1",
        "tune.seeds=1",
        "tune.confirm_seeds=2",
        "trainer=quick",
        "logger=none",
        "metrics=none",
        f"hydra.sweep.dir={study}",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    arm = json.loads((study / "tune.json").read_text())["arms"]["all"]
    # 20 steps of SGD with momentum on digits: lr 0.1 beats 0.01 (val loss 0.57 against 2.12).
    assert arm["chosen"] == {"optimizer.lr": 0.1} and arm["edge"] == {"optimizer.lr": "high"}
    for trial in arm["trials"]:
        summary = json.loads((study / trial["seeds"][0]["run_dir"] / "summary.json").read_text())
        assert trial["score"] == summary["val/loss"] and trial["seeds"][0]["status"] == "finished"
    assert arm["confirmation"] == {"seeds": [1, 2], "run_dirs": ["2", "3"], "statuses": ["finished", "finished"]}
    assert (study / ".submitit").is_dir()  # the jobs went through submitit, not in-process


def test_two_job_sweep_through_the_slurm_launcher(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_memexp(
        "train",
        "-m",
        *SLURM,
        "optimizer=sgd,adamw",
        "trainer=quick",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["step"] == 20
        assert {"val/loss", "test/loss", "gap/loss", "gap/acc"} <= set(summary)
    submitted = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(submitted) == 2, submitted  # one Slurm array, two tasks
    assert "2 finished" in result.stdout


def test_preempted_job_is_requeued_and_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    common = [
        "optimizer=sgd",
        "trainer.max_steps=4000",
        "trainer.log_every=50",
        "trainer.eval_every=1000",
        "logger=none",
        "trainer.progress=plain",
    ]
    env = memexp_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"  # same thread count in both runs: bit-identical CPU arithmetic
    sweep = tmp_path / "sweep"
    outcome: dict[str, subprocess.CompletedProcess[str]] = {}

    def launch() -> None:
        outcome["result"] = run_memexp(
            "train", "-m", *SLURM, *common, f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env, timeout=600
        )

    launcher = threading.Thread(target=launch)
    launcher.start()
    metrics = sweep / "0" / "metrics.jsonl"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 4):
        time.sleep(0.5)
    assert metrics.is_file(), "the Slurm job never started training"
    # This sweep's own job (other sweeps may share the cluster): submitit names its folder by job id.
    [job_dir] = [p for p in (sweep / ".submitit").iterdir() if p.is_dir() and p.name[0].isdigit()]
    job_id = job_dir.name
    # The preemption warning, as Slurm sends it to the job step (submitit's --signal=USR2@...).
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    launcher.join(timeout=600)
    assert not launcher.is_alive(), "the sweep did not end (a lost job would block submitit forever)"
    result = outcome["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    state = job_state(job_id.split("_")[0])
    for _ in range(60):  # the result is written just before the job's processes exit
        if state.get("JobState") not in ("RUNNING", "COMPLETING"):
            break
        time.sleep(0.5)
        state = job_state(job_id.split("_")[0])
    assert state.get("Restarts") == "1", state
    assert state.get("JobState") == "COMPLETED", state
    log = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert "SIGUSR2 at step" in log and "resumed from checkpoint at step" in log
    preempted = json.loads((sweep / "0" / "summary.json").read_text())
    assert preempted["status"] == "finished" and preempted["step"] == 4000

    # The same run, never interrupted, in this process's environment.
    reference = run_memexp("train", *common, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path, env=env)
    assert reference.returncode == 0, reference.stderr
    uninterrupted = json.loads((tmp_path / "reference" / "summary.json").read_text())
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "gap/loss", "gap/acc"):
        assert preempted[key] == uninterrupted[key], key
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == sorted(steps), "a resumed run must not log a step twice"
