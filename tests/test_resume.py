"""Exact resume after a real `kill -9`, and re-running a sweep."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import memexp_env, run_memexp

COMMON = [
    "optimizer=adamw",
    "model=mlp",
    "model.dropout=0.2",
    "trainer.max_steps=1000",
    "trainer.log_every=10",
    "trainer.eval_every=250",
    "trainer.checkpoint_every=100",
    "logger=none",
    "trainer.progress=plain",
]
RESULT_KEYS = (
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "test/loss",
    "test/acc",
    "gap/loss",
    "gap/acc",
    "step",
    "status",
)


def last_logged_step(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    lines = metrics.read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    env = memexp_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    kill_after = random.Random().randint(150, 700)
    run_dir = tmp_path / "killed"
    script = Path(sys.executable).parent / "memexp"
    command = [str(script), "train", *COMMON, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while last_logged_step(run_dir / "metrics.jsonl") < kill_after and process.poll() is None:
        assert time.monotonic() < deadline, "the run never reached the kill step"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # no handler, no cleanup: as after a node failure
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"run ended before the kill (step {kill_after})"
    killed_at = last_logged_step(run_dir / "metrics.jsonl")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    resumed = run_memexp("train", *COMMON, f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint at step" in resumed.stdout, f"killed at {killed_at}"
    reference = run_memexp("train", *COMMON, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path, env=env)
    assert reference.returncode == 0, reference.stderr

    after = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert {k: after[k] for k in RESULT_KEYS} == {k: expected[k] for k in RESULT_KEYS}, f"killed at {killed_at}"
    # The log has every step once, as if nothing had happened.
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reference_events = [
        json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in events] == [e["step"] for e in reference_events]
    assert [e.get("train/batch_loss") for e in events] == [e.get("train/batch_loss") for e in reference_events]


def test_rerunning_a_sweep_reuses_finished_jobs_and_resumes_interrupted_ones(tmp_path: Path) -> None:
    sweep_args = ["train", "-m", "optimizer=sgd,adamw", "trainer=quick", "trainer.checkpoint_every=5", "logger=none"]
    first = run_memexp(*sweep_args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    [first_sweep] = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    # Make job 1 look interrupted at step 10: drop its later checkpoints and mark it running.
    job1 = first_sweep / "1"
    for checkpoint in (job1 / "checkpoints").glob("step_*.pt"):
        if int(checkpoint.stem.split("_")[1]) > 10:
            checkpoint.unlink()
    summary = json.loads((job1 / "summary.json").read_text())
    finished_values = {k: summary[k] for k in RESULT_KEYS}
    summary["status"] = "running"
    (job1 / "summary.json").write_text(json.dumps(summary))

    time.sleep(1.1)  # a new sweep dir (the default name has one-second resolution)
    second = run_memexp(*sweep_args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "already finished" in second.stdout and "resuming the interrupted job" in second.stdout
    second_sweep = max((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert second_sweep != first_sweep
    reused = json.loads((second_sweep / "0" / "summary.json").read_text())
    assert reused["reused_from"] == str(first_sweep / "0") and reused["status"] == "finished"
    assert not (second_sweep / "0" / "train.log").read_text().count("step "), "a finished job must not retrain"
    resumed = json.loads((second_sweep / "1" / "summary.json").read_text())
    assert "reused_from" not in resumed
    assert {k: resumed[k] for k in RESULT_KEYS} == finished_values  # resumed at 10, same end
