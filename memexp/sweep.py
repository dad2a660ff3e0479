"""Sweeps: re-running a sweep without redoing finished jobs, and a truthful end-of-sweep report.

Every run dir holds its job key (``job_key.txt``, memexp.rundir). When a job of a sweep starts and an
earlier job with the same key exists anywhere under ``<paths.output_root>`` (any task, any sweep, any
depth: ``outputs/train/multiruns/<date>/<n>/``, ``outputs/tune/<study>/search/<n>/``, ...):
- finished: its results are reused (summary, metrics, W&B id and final checkpoint are linked into
  the new job dir, ``summary.json`` says ``reused_from``) and nothing is trained;
- interrupted (running / failed, with a checkpoint): its checkpoints, metrics and W&B id are linked
  into the new job dir and training resumes from the latest checkpoint.
An earlier copy whose files are unreadable is not reused, and the reason is printed.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from memexp import rundir
from memexp.rundir import Status

# Folders inside a run dir or a sweep dir that never hold a job.
NOT_JOB_DIRS = frozenset({rundir.CHECKPOINT_DIR, "wandb", ".hydra", ".submitit", "__pycache__"})


@dataclass
class PreviousJob:
    run_dir: Path
    status: str
    has_checkpoint: bool


def job_dirs(output_root: Path) -> Iterator[Path]:
    """Every run dir under ``output_root`` (a dir holding a job key or a summary), at any depth."""
    for current, dirnames, filenames in os.walk(output_root):
        if rundir.KEY_FILE in filenames or rundir.SUMMARY_FILE in filenames:
            dirnames[:] = []  # a run dir holds no other run
            yield Path(current)
        else:
            dirnames[:] = sorted(d for d in dirnames if d not in NOT_JOB_DIRS)


def same_overrides(run_dir: Path, overrides: list[str]) -> bool:
    try:
        earlier = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(earlier, list) and sorted(map(str, earlier)) == sorted(overrides)


def find_previous(
    output_root: Path, key: str, exclude: Path | None = None, overrides: list[str] | None = None
) -> tuple[PreviousJob | None, list[str]]:
    """The most useful earlier job with this key (a finished one if any, else the one with the
    newest checkpoint), and why earlier copies of this job that cannot be used were passed over
    (an unreadable summary.json; a missing or corrupt job_key.txt where ``.hydra/overrides.yaml``
    names the same ``overrides``)."""
    finished, resumable, passed_over = [], [], []
    excluded = exclude.resolve() if exclude is not None else None
    for run_dir in job_dirs(output_root) if output_root.is_dir() else ():
        if run_dir.resolve() == excluded:
            continue
        earlier_key = rundir.read_job_key(run_dir)
        if earlier_key is None:
            if overrides is not None and same_overrides(run_dir, overrides):
                passed_over.append(f"{run_dir}: job_key.txt missing or corrupt")
            continue
        if earlier_key != key:
            continue
        summary, problem = rundir.read_summary(run_dir)
        if summary is None:
            passed_over.append(f"{run_dir}: {problem or 'no summary.json'}")
            continue
        if summary.get("reused_from"):
            continue  # a pointer to another job, not an original
        status = summary.get("status", Status.MISSING)
        checkpoints = sorted((run_dir / rundir.CHECKPOINT_DIR).glob("step_*.pt"))
        if status == Status.FINISHED:
            written = (run_dir / rundir.SUMMARY_FILE).stat().st_mtime
            finished.append((written, PreviousJob(run_dir, status, bool(checkpoints))))
        elif checkpoints and status in (Status.RUNNING, Status.FAILED):
            resumable.append((checkpoints[-1].stat().st_mtime, PreviousJob(run_dir, status, True)))
    for candidates in (finished, resumable):
        if candidates:
            return max(candidates, key=lambda item: item[0])[1], passed_over
    return None, passed_over


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def adopt_previous(previous: PreviousJob, run_dir: Path) -> None:
    """Bring an earlier job's state into ``run_dir`` (hard links where the file system allows)."""
    for name in (rundir.METRICS_FILE, rundir.WANDB_ID_FILE):
        if (previous.run_dir / name).is_file():
            shutil.copy2(previous.run_dir / name, run_dir / name)
    checkpoints = sorted((previous.run_dir / rundir.CHECKPOINT_DIR).glob("step_*.pt"))
    if previous.status == Status.FINISHED:
        checkpoints = checkpoints[-1:]
        summary = rundir.read_summary(previous.run_dir)[0] or {}
        summary.update(reused_from=str(previous.run_dir), run_dir=str(run_dir))
        rundir.write_summary(run_dir, summary)
    for checkpoint in checkpoints:
        _link_or_copy(checkpoint, run_dir / rundir.CHECKPOINT_DIR / checkpoint.name)


def reuse_earlier_job(output_root: Path, key: str, run_dir: Path, overrides: list[str]) -> str | None:
    """Reuse or resume an earlier job with this key (printing what happens and what was passed
    over); returns its status, None when there is none and the job trains from scratch."""
    previous, passed_over = find_previous(output_root.resolve(), key, exclude=run_dir, overrides=overrides)
    for reason in passed_over:
        print(f"memexp: not reusing {reason}")
    if previous is None:
        if passed_over:
            print("memexp: training this job again")
        return None
    adopt_previous(previous, run_dir)
    if previous.status == Status.FINISHED:
        print(f"memexp: job already finished in {previous.run_dir}; reusing its results")
    else:
        print(f"memexp: resuming the interrupted job in {previous.run_dir}")
    return previous.status


# ----------------------------------------------------------------------------------------------
# End-of-sweep report: the truth about every job, whatever the launcher says.


def sweep_jobs(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    jobs = []
    for job_dir in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    ):
        jobs.append((job_dir, rundir.read_summary(job_dir)[0] or {"status": Status.MISSING}))
    return jobs


def read_overrides(job_dir: Path) -> list[str] | None:
    """A job's command-line overrides (its .hydra/overrides.yaml), None when unreadable."""
    try:
        return [str(item) for item in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []]
    except (OSError, yaml.YAMLError, TypeError):
        return None


def report_sweep(sweep_dir: Path, expected_jobs: int | None = None) -> int:
    """Print one line per job and a status count; return the number of jobs that did not end
    (failed, never started, or still marked running)."""
    from rich.console import Console
    from rich.table import Table

    jobs = sweep_jobs(sweep_dir) if sweep_dir.is_dir() else []
    table = Table(title=f"sweep {sweep_dir}")
    for column in ("job", "status", "steps", "val/loss", "test/loss", "gap/loss", "gap/acc", "overrides that differ"):
        table.add_column(column)
    counts: dict[str, int] = {}
    job_overrides = [read_overrides(job_dir) for job_dir, _ in jobs]
    # Overrides every job shares (trainer=quick logger=none ...) would repeat on every line.
    shared = set.intersection(*(set(o) for o in job_overrides if o is not None)) if any(job_overrides) else set()
    for (job_dir, summary), overrides_list in zip(jobs, job_overrides):
        status = str(summary.get("status", Status.MISSING))
        counts[status] = counts.get(status, 0) + 1
        overrides = "?" if overrides_list is None else " ".join(o for o in overrides_list if o not in shared)
        cells = [summary.get(k) for k in ("val/loss", "test/loss", "gap/loss", "gap/acc")]
        note = " (reused)" if summary.get("reused_from") else ""
        table.add_row(
            job_dir.name,
            status + note,
            str(summary.get("step", "-")),
            *(f"{c:.4f}" if isinstance(c, float) else "-" for c in cells),
            overrides,
        )
    missing = max(0, (expected_jobs or 0) - len(jobs))
    if missing:
        counts[Status.MISSING] = counts.get(Status.MISSING, 0) + missing
    table.caption = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    # Not a terminal (a log file, CI): wide enough that the overrides are not cut to a few letters.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return sum(n for status, n in counts.items() if status not in rundir.ENDED)
