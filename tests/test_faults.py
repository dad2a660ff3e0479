"""Faults a run dir must survive (issue 13): a partial log line, a finished job run again, two
processes on one run dir, a full disk, broken files in an earlier sweep, W&B without a network."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from memexp import checkpoint as ckpt
from memexp import rundir
from memexp.config import Progress
from memexp.logging import LocalLogger
from memexp.logging.progress import ProgressReporter
from memexp.train import build_run, check_config, train
from tests.conftest import memexp_env, run_memexp
from tests.logging.wandb_file import offline_run_files, read_wandb_file

RESULT_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "gap/loss", "gap/acc", "step", "status")
LOOP = [
    "logger=none",
    "metrics=none",
    "trainer.progress=off",
    "trainer.max_steps=40",
    "trainer.log_every=5",
    "trainer.eval_every=20",
    "trainer.checkpoint_every=20",
]


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def train_in(compose, run_dir: Path, overrides: list[str], logger: LocalLogger | None = None):
    run = build_run(check_config(compose([*LOOP, *overrides])))
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(run, run_dir, [logger or LocalLogger(run_dir)], ProgressReporter(run.max_steps, Progress.off))


class FullDiskAt(LocalLogger):
    """A local log whose disk fills up in the middle of the line for ``step``: half the line is on
    disk, then the write fails with ENOSPC (as a line-buffered write to a full file system does)."""

    def __init__(self, run_dir: Path, step: int) -> None:
        super().__init__(run_dir)
        self.full_at = step

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step == self.full_at:
            line = json.dumps({"step": step, **metrics})
            self._handle.write(line[: len(line) // 2])
            self._handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().log(metrics, step)


def test_a_partial_log_line_is_dropped_on_resume_and_nothing_else_is_lost(compose, tmp_path: Path) -> None:
    reference = train_in(compose, tmp_path / "reference", [])
    # The disk fills up in the middle of the step-25 line, after the step-20 checkpoint.
    (tmp_path / "run").mkdir()
    with pytest.raises(OSError, match="No space left"):
        train_in(compose, tmp_path / "run", [], FullDiskAt(tmp_path / "run", 25))
    failed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["step"] == 25
    assert failed["error"] == "OSError: [Errno 28] No space left on device"
    assert not (tmp_path / "run" / "metrics.jsonl").read_text().endswith("\n"), "the partial line is on disk"
    assert [step for step, _ in ckpt.CheckpointManager(tmp_path / "run" / "checkpoints", 3).checkpoints()] == [20]

    with pytest.warns(UserWarning, match=r"dropped unreadable line\(s\) \[\d+\]"):
        resumed = train_in(compose, tmp_path / "run", [])
    assert {k: resumed[k] for k in RESULT_KEYS} == {k: reference[k] for k in RESULT_KEYS}
    # Every event once, byte for byte as in the uninterrupted run: nothing lost, nothing repeated.
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == (tmp_path / "reference" / "metrics.jsonl").read_bytes()


def test_a_finished_job_run_again_in_place_changes_nothing(tmp_path: Path) -> None:
    single = ["train", "trainer=quick", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_memexp(*single, cwd=tmp_path).returncode == 0
    before = files_of(tmp_path / "run")
    again = run_memexp(*single, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"job already finished in {tmp_path / 'run'}" in again.stdout
    assert files_of(tmp_path / "run") == before

    sweep = ["train", "-m", "optimizer=sgd,adamw", "trainer=quick", "logger=none", f"hydra.sweep.dir={tmp_path / 's'}"]
    assert run_memexp(*sweep, cwd=tmp_path).returncode == 0
    before = files_of(tmp_path / "s")
    again = run_memexp(*sweep, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("job already finished in") == 2 and "2 finished" in again.stdout
    assert files_of(tmp_path / "s") == before


def test_a_second_process_on_a_run_dir_stops_at_once_naming_the_holder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = f"pid={os.getpid()} host={socket.gethostname()} slurm_job=\n"  # this test process: alive
    (run_dir / rundir.LOCK_FILE).write_text(holder)
    started = time.monotonic()
    second = run_memexp("train", "trainer=quick", "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert second.returncode == 1
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in second.stderr
    assert time.monotonic() - started < 30
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    assert (run_dir / rundir.LOCK_FILE).read_text() == holder, "the holder's lock stays"

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the lock of a killed process
    (run_dir / rundir.LOCK_FILE).write_text(f"pid={dead.pid} host={socket.gethostname()} slurm_job=\n")
    third = run_memexp("train", "trainer=quick", "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert f"taking over the stale lock {run_dir / rundir.LOCK_FILE} (pid {dead.pid}" in third.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert not (run_dir / rundir.LOCK_FILE).exists(), "the lock goes with its process"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A size-limited tmpfs (needs root); yields (mount point, resize)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=420k", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a tmpfs needs root")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_checkpointing_fails_the_run_keeps_the_last_checkpoint_and_resume_works(
    tmp_path: Path, small_disk
) -> None:
    mount, resize = small_disk
    # 420 KiB hold the small files and one ~250 KB checkpoint, not the second one being written.
    args = ["train", "trainer=quick", "logger=none", "trainer.checkpoint_every=5", "trainer.keep_checkpoints=1"]
    failed = run_memexp(*args, f"hydra.run.dir={mount / 'run'}", cwd=tmp_path)
    assert failed.returncode == 1
    [message] = [line for line in failed.stderr.splitlines() if line.startswith("memexp: error:")]
    assert message.startswith("memexp: error: the run failed at step 10 (") and "No space left on device" in message
    summary = json.loads((mount / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["step"] == 10
    assert summary["error"] == "OSError: [Errno 28] No space left on device"
    [(step, path)] = ckpt.CheckpointManager(mount / "run" / "checkpoints", 1).checkpoints()
    assert step == 5 and ckpt.load(path)["step"] == 5
    assert not list((mount / "run" / "checkpoints").glob(".*.tmp")), "no half-written checkpoint is left"

    resize("4m")  # space freed: the same command resumes
    resumed = run_memexp(*args, f"hydra.run.dir={mount / 'run'}", "trainer.progress=plain", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint at step 5" in resumed.stdout
    reference = run_memexp(*args, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    after = json.loads((mount / "run" / "summary.json").read_text())
    expected = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert {k: after[k] for k in RESULT_KEYS} == {k: expected[k] for k in RESULT_KEYS}


def test_broken_files_in_an_earlier_sweep_rerun_that_job_and_say_why(tmp_path: Path) -> None:
    args = ["train", "-m", "optimizer=sgd,adamw,lion", "trainer=quick", "logger=none"]
    # The earlier sweep lies deep under paths.output_root, where a tune study puts its jobs.
    earlier = tmp_path / "outputs" / "tune" / "study" / "search"
    first = run_memexp(*args, f"hydra.sweep.dir={earlier}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    jobs = [earlier / str(n) for n in range(3)]
    originals = [json.loads((job / "summary.json").read_text()) for job in jobs]
    (jobs[0] / "summary.json").write_text('{"status": "fini')  # torn
    (jobs[1] / "job_key.txt").unlink()
    for path in sorted((jobs[2] / ".hydra").iterdir()):
        path.unlink()
    (jobs[2] / ".hydra").rmdir()

    second = run_memexp(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"not reusing {jobs[0]}: summary.json unreadable: JSONDecodeError" in second.stdout
    assert f"not reusing {jobs[1]}: job_key.txt missing or corrupt" in second.stdout
    assert second.stdout.count("training this job again") == 2 and "3 finished" in second.stdout
    [sweep] = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    rerun = [json.loads((sweep / str(n) / "summary.json").read_text()) for n in range(3)]
    for n in (0, 1):  # trained again, to the same numbers
        assert "reused_from" not in rerun[n]
        assert {k: rerun[n][k] for k in RESULT_KEYS} == {k: originals[n][k] for k in RESULT_KEYS}
    # Job 2's results are intact (only Hydra's record of its config is gone): reused, not retrained.
    assert rerun[2]["reused_from"] == str(jobs[2])
    assert {k: rerun[2][k] for k in RESULT_KEYS} == {k: originals[2][k] for k in RESULT_KEYS}

    # The same sweep dir again, with a torn summary in place: that job says why and runs again (from
    # its final checkpoint), to the same numbers and the same log; the others are left as they are.
    metrics = (sweep / "0" / "metrics.jsonl").read_bytes()
    (sweep / "0" / "summary.json").write_text('{"status": "fini')
    third = run_memexp(*args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert f"{sweep / '0'}: summary.json unreadable: JSONDecodeError" in third.stdout
    assert third.stdout.count("job already finished in") == 2 and "3 finished" in third.stdout
    again = json.loads((sweep / "0" / "summary.json").read_text())
    assert {k: again[k] for k in RESULT_KEYS} == {k: originals[0][k] for k in RESULT_KEYS}
    assert (sweep / "0" / "metrics.jsonl").read_bytes() == metrics


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_wandb_online_without_network_falls_back_to_offline_once_per_sweep(tmp_path: Path) -> None:
    env = memexp_env(tmp_path)
    env.update(WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}", WANDB_API_KEY="0" * 40)
    args = ["train", "-m", "optimizer=sgd,adamw", "trainer=quick", "logger.wandb.mode=online"]
    started = time.monotonic()
    result = run_memexp(
        *args, "logger.wandb.init_timeout=2", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path, env=env
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("memexp: warning: W&B unreachable within 2 s") == 1
    assert "W&B offline for this job" in result.stdout  # the second job did not wait again
    assert (tmp_path / "s" / rundir.WANDB_MODE_FILE).read_text().startswith("offline: ")
    assert elapsed < 60, f"{elapsed:.0f} s: W&B's own default is 90 s per job"
    assert not list((tmp_path / "s" / "0" / "wandb").glob("run-*")), "the failed online attempt is removed"
    for job in ("0", "1"):
        found = offline_run_files(tmp_path / "s" / job)
        assert len(found) == 1, (found, result.stdout[-2000:], result.stderr[-2000:])
        [offline] = found
        wandb_run = read_wandb_file(offline)
        assert wandb_run.run_id == (tmp_path / "s" / job / "wandb_id.txt").read_text().strip()
        assert wandb_run.summary["status"] == "finished"
        summary = json.loads((tmp_path / "s" / job / "summary.json").read_text())
        assert wandb_run.summary["gap/loss"] == pytest.approx(summary["gap/loss"])


def test_a_checkpoint_survives_a_failed_write_of_its_successor(tmp_path: Path, monkeypatch) -> None:
    manager = ckpt.CheckpointManager(tmp_path, keep=1)
    manager.save({"step": 5, "w": torch.arange(4)}, 5)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        manager.save({"step": 10}, 10)
    assert [step for step, _ in manager.checkpoints()] == [5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005.pt"]
    assert torch.equal(manager.load_latest()["w"], torch.arange(4))
