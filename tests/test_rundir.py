"""memexp.rundir: atomic writes, the append-only log reader, summaries, the job key, the lock, and
the sweep expansion the tune command composes its jobs with."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from memexp import rundir
from memexp.rundir import Status


def test_write_atomic_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    rundir.write_json_atomic(path, {"status": "running", "loss": float("nan")})
    assert json.loads(path.read_text()) == {"loss": "nan", "status": "running"}
    assert oct(path.stat().st_mode & 0o777) == "0o644"

    def fails_halfway(handle) -> None:
        handle.write(b'{"status": "fin')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        rundir.write_atomic(path, fails_halfway)
    assert json.loads(path.read_text())["status"] == "running"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_read_jsonl_reports_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5, "loss": 1.5}\n\n[1, 2]\n{"step": 10, "loss": 1.25}\n{"step": 15, "lo')
    events, bad_lines = rundir.read_jsonl(path)
    assert [event for _, event in events] == [{"step": 5, "loss": 1.5}, {"step": 10, "loss": 1.25}]
    assert [line for line, _ in events] == ['{"step": 5, "loss": 1.5}\n', '{"step": 10, "loss": 1.25}\n']
    assert bad_lines == [3, 5]  # a JSON list is not an event; line 5 is cut off


def test_read_summary_says_why_it_cannot_be_used(tmp_path: Path) -> None:
    assert rundir.read_summary(tmp_path) == (None, "")
    (tmp_path / "summary.json").write_text("[1]")
    assert rundir.read_summary(tmp_path) == (None, "summary.json unreadable: not a JSON object")
    (tmp_path / "summary.json").write_bytes(b"\xff\xfe")
    assert rundir.read_summary(tmp_path)[1].startswith("summary.json unreadable: UnicodeDecodeError")
    rundir.write_summary(tmp_path, {"status": Status.FINISHED, "step": 3})
    assert rundir.read_summary(tmp_path) == ({"status": "finished", "step": 3}, "")


def test_job_key_ignores_what_does_not_change_the_result(compose) -> None:
    base = rundir.job_key(compose(["trainer=quick"]))
    assert len(base) == 16
    assert rundir.job_key(compose(["trainer=quick", "logger=none", "trainer.progress=off"])) == base
    assert rundir.job_key(compose(["trainer=quick", "seed=1"])) != base


def test_a_corrupt_job_key_reads_as_none(tmp_path: Path) -> None:
    rundir.write_job_key(tmp_path, "0123456789abcdef")
    assert rundir.read_job_key(tmp_path) == "0123456789abcdef"
    (tmp_path / rundir.KEY_FILE).write_text("0123456789ab")  # cut off
    assert rundir.read_job_key(tmp_path) is None


def test_the_lock_names_its_live_holder_and_takes_over_a_dead_ones(tmp_path: Path) -> None:
    with rundir.RunDirLock(tmp_path):
        text = (tmp_path / rundir.LOCK_FILE).read_text()
        assert text.startswith(f"pid={os.getpid()} host={socket.gethostname()} ")
        with pytest.raises(rundir.RunDirInUse, match=f"in use by pid {os.getpid()} on host {socket.gethostname()}"):
            rundir.RunDirLock(tmp_path).acquire()
    assert not (tmp_path / rundir.LOCK_FILE).exists()

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / rundir.LOCK_FILE).write_text(f"pid={dead.pid} host={socket.gethostname()} slurm_job=\n")
    with pytest.warns(UserWarning, match=f"stale lock .* \\(pid {dead.pid} on host"):
        with rundir.RunDirLock(tmp_path):
            assert rundir.LockHolder.parse((tmp_path / rundir.LOCK_FILE).read_text()) == rundir.LockHolder.me()


def test_a_lock_from_another_host_counts_as_held_unless_it_is_our_requeued_slurm_job(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert rundir.LockHolder(1, "elsewhere", "41").is_alive()
    assert not rundir.LockHolder(1, "elsewhere", "42").is_alive()  # Slurm reruns a job after it ended


def test_expand_sweep_is_the_cartesian_product_in_hydras_order() -> None:
    hydra = {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": {"seed": "0,1"}},
        "overrides": {"task": ["optimizer=sgd,adamw", "trainer=quick"]},
    }
    assert rundir.expand_sweep(hydra) == [
        ["seed=0", "optimizer=sgd", "trainer=quick"],
        ["seed=0", "optimizer=adamw", "trainer=quick"],
        ["seed=1", "optimizer=sgd", "trainer=quick"],
        ["seed=1", "optimizer=adamw", "trainer=quick"],
    ]
    assert rundir.expand_sweep({**hydra, "sweeper": {"_target_": "hydra_plugins.optuna.OptunaSweeper"}}) is None
    ranged = {**hydra, "overrides": {"task": ["seed=range(0,3)"]}}  # the command line's seed wins
    assert rundir.expand_sweep(ranged) == [["seed=0"], ["seed=1"], ["seed=2"]]
    interval = {**hydra, "overrides": {"task": ["optimizer.lr=interval(0.1,1)"]}}
    assert rundir.expand_sweep(interval) is None  # the basic sweeper rejects intervals: jobs unknown


def test_compose_sweep_gives_each_jobs_overrides_and_config() -> None:
    sweep = rundir.compose_sweep(["optimizer=sgd,adamw", "optimizer.lr=0.1,0.01", "trainer=quick"])
    assert [job.overrides for job in sweep.jobs] == [
        ["optimizer=sgd", "optimizer.lr=0.1", "trainer=quick"],
        ["optimizer=sgd", "optimizer.lr=0.01", "trainer=quick"],
        ["optimizer=adamw", "optimizer.lr=0.1", "trainer=quick"],
        ["optimizer=adamw", "optimizer.lr=0.01", "trainer=quick"],
    ]
    assert [(job.config.optimizer.name, job.config.optimizer.lr) for job in sweep.jobs] == [
        ("sgd", 0.1),
        ("sgd", 0.01),
        ("adamw", 0.1),
        ("adamw", 0.01),
    ]
    assert all(job.config.trainer.max_steps == 20 for job in sweep.jobs)
    assert str(sweep.config.hydra.sweep.dir).startswith("outputs/train/multiruns/")
