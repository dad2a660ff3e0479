"""Sweeps: a deterministic key per job, re-running a sweep without redoing finished jobs, and a
truthful end-of-sweep report.

Job key: a hash of the resolved config that decides the result (everything but the logger, the
paths and the progress display). Every run dir holds it in ``job_key.txt``. When a multirun job
starts and an earlier job with the same key exists under ``<output_root>/<task>/multiruns/``:
- finished: its results are reused (summary, metrics, W&B id and final checkpoint are linked into
  the new job dir, ``summary.json`` says ``reused_from``) and nothing is trained;
- interrupted (running / failed, with a checkpoint): its checkpoints, metrics and W&B id are linked
  into the new job dir and training resumes from the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

KEY_FILE = "job_key.txt"
# Config keys that do not change a run's result, so they are left out of the job key.
NON_RESULT_KEYS = ("logger", "paths", "experiment", "task_name", "tune")
NON_RESULT_TRAINER_KEYS = ("progress", "log_every", "checkpoint_every", "keep_checkpoints", "resume", "device")


def job_key(cfg: DictConfig) -> str:
    container: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra" or key in NON_RESULT_KEYS:
            continue
        value = cfg[key]
        container[str(key)] = (
            OmegaConf.to_container(value, resolve=True, enum_to_str=True) if OmegaConf.is_config(value) else value
        )
    trainer = dict(container.get("trainer", {}))
    for key in NON_RESULT_TRAINER_KEYS:
        trainer.pop(key, None)
    container["trainer"] = trainer
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


@dataclass
class PreviousJob:
    run_dir: Path
    status: str
    has_checkpoint: bool


def find_previous(sweeps_root: Path, key: str, exclude: Path | None = None) -> PreviousJob | None:
    """The most useful earlier job with this key: a finished one if any, else the one with the
    newest checkpoint."""
    finished, resumable = [], []
    for key_file in sweeps_root.glob(f"*/*/{KEY_FILE}"):
        run_dir = key_file.parent
        if (exclude is not None and run_dir.resolve() == exclude.resolve()) or key_file.read_text().strip() != key:
            continue
        summary = read_summary(run_dir) or {}
        status = summary.get("status", "missing")
        if summary.get("reused_from"):
            continue  # a pointer to another job, not an original
        checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"))
        if status == "finished":
            finished.append((key_file.stat().st_mtime, PreviousJob(run_dir, status, bool(checkpoints))))
        elif checkpoints and status in ("running", "failed"):
            resumable.append((checkpoints[-1].stat().st_mtime, PreviousJob(run_dir, status, True)))
    for candidates in (finished, resumable):
        if candidates:
            return max(candidates, key=lambda item: item[0])[1]
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def adopt_previous(previous: PreviousJob, run_dir: Path) -> None:
    """Bring an earlier job's state into ``run_dir`` (hard links where the file system allows)."""
    for name in ("metrics.jsonl", "wandb_id.txt"):
        if (previous.run_dir / name).is_file():
            shutil.copy2(previous.run_dir / name, run_dir / name)
    checkpoints = sorted((previous.run_dir / "checkpoints").glob("step_*.pt"))
    if previous.status == "finished":
        checkpoints = checkpoints[-1:]
        summary = read_summary(previous.run_dir) or {}
        summary.update(reused_from=str(previous.run_dir), run_dir=str(run_dir))
        from memexp.logging import write_json_atomic

        write_json_atomic(run_dir / "summary.json", summary)
    for checkpoint in checkpoints:
        _link_or_copy(checkpoint, run_dir / "checkpoints" / checkpoint.name)


# ----------------------------------------------------------------------------------------------
# End-of-sweep report: the truth about every job, whatever the launcher says.

FAILED_STATUSES = ("failed", "missing", "running")


def sweep_jobs(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    jobs = []
    for job_dir in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    ):
        jobs.append((job_dir, read_summary(job_dir) or {"status": "missing"}))
    return jobs


def report_sweep(sweep_dir: Path, expected_jobs: int | None = None) -> int:
    """Print one line per job and a status count; return the number of jobs that did not end
    (failed, never started, or still marked running)."""
    from rich.console import Console
    from rich.table import Table

    jobs = sweep_jobs(sweep_dir) if sweep_dir.is_dir() else []
    table = Table(title=f"sweep {sweep_dir}")
    for column in ("job", "status", "steps", "val/loss", "test/loss", "gap/loss", "gap/acc", "overrides"):
        table.add_column(column)
    counts: dict[str, int] = {}
    for job_dir, summary in jobs:
        status = summary.get("status", "missing")
        counts[status] = counts.get(status, 0) + 1
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = " ".join(OmegaConf.load(overrides_file)) if overrides_file.is_file() else "?"
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
        counts["missing"] = counts.get("missing", 0) + missing
    table.caption = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    Console().print(table)
    return sum(n for status, n in counts.items() if status in FAILED_STATUSES)


# ----------------------------------------------------------------------------------------------
# The Hydra callback that tells `memexp train` which sweep just ran.

CURRENT_SWEEP: tuple[Path, int | None] | None = None

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object  # type: ignore[assignment,misc]


def sweep_overrides(config: DictConfig) -> list[str]:
    """The overrides Hydra's basic sweeper expands: ``hydra.sweeper.params`` (e.g. from an
    experiment preset) first, then the command line's, as BasicSweeper does."""
    params = config.hydra.sweeper.get("params") or {}
    return [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)


def count_basic_sweep_jobs(overrides: list[str]) -> int | None:
    """How many jobs Hydra's basic sweeper makes of these overrides (None if it cannot tell)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # noqa: BLE001 - a custom sweeper: the count is unknown, not an error
        return None


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global CURRENT_SWEEP
        expected = None
        if config.hydra.sweeper.get("_target_", "").endswith("BasicSweeper"):
            expected = count_basic_sweep_jobs(sweep_overrides(config))
        CURRENT_SWEEP = (Path(str(config.hydra.sweep.dir)), expected)
