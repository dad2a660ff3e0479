"""The run directory: what `memexp train` writes into a run dir, and how, in one place.

A run dir (``hydra.run.dir``, or ``<hydra.sweep.dir>/<job.num>`` in a sweep) holds::

    .hydra/          Hydra's config.yaml, overrides.yaml, hydra.yaml
    metrics.jsonl    one JSON object per log event (append-only; a partial last line is dropped on resume)
    summary.json     status (see Status), step, final values; rewritten atomically
    checkpoints/     step_<n>.pt, rewritten atomically
    job_key.txt      the job key: a hash of the config that decides the result
    wandb_id.txt     the W&B run id, so a resumed run continues its W&B run
    run.lock         while a process trains here: its pid and host

A sweep dir holds Hydra's ``multirun.yaml``, the job dirs, and ``wandb_mode.txt`` once a job found
W&B unreachable (the following jobs go offline without waiting again).

Every file is written through :func:`write_atomic` (temporary file, fsync, rename), so a crash leaves
the old file or the new one, never half of one. The sweep expansion (which jobs ``train -m`` makes
of its overrides) is here too: ``memexp plan``, the end-of-sweep report, ``memexp report`` and the
tune command all ask :func:`expand_sweep` / :func:`compose_sweep`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from memexp.errors import MemexpError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
KEY_FILE = "job_key.txt"
WANDB_ID_FILE = "wandb_id.txt"
LOCK_FILE = "run.lock"
WANDB_MODE_FILE = "wandb_mode.txt"  # in a sweep dir
TUNE_JSON = "tune.json"  # in a `memexp tune` study dir (its format: memexp/tune.py)


class Status(StrEnum):
    """A run's status. ``summary.json`` holds one of the first four; the last two are what a
    reader concludes about a run that did not say it ended."""

    RUNNING = "running"  # training, or killed before it could write anything else
    FINISHED = "finished"
    DIVERGED = "diverged"  # non-finite loss: stopped on purpose, exit code 0
    FAILED = "failed"  # an error (summary.json says which)
    INCOMPLETE = "incomplete"  # a run dir that did not end: still running, killed, or no summary
    MISSING = "missing"  # a sweep's job with no run dir (or no summary) at all
    NOT_REACHED = "not reached"  # report --at: a finished run that never reaches the reading point


ENDED = (Status.FINISHED, Status.DIVERGED)  # statuses after which a job needs no more work


# ----------------------------------------------------------------------------------------------
# Writing and reading files


def json_ready(value: Any) -> Any:
    """Floats that JSON can hold: NaN and infinities become strings ("nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


class _WriteErrorKeeper:
    """A binary file handle that remembers why a write failed. torch.save's C++ zip writer turns
    the OSError of a full disk into ``RuntimeError: ... unexpected pos``; the caller wants ENOSPC."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.error = handle, None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """``write(handle)`` to a temporary file in the same directory, fsync, then rename it over
    ``path``: a crash or a full disk leaves either the old file or the new one (and no temporary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            keeper = _WriteErrorKeeper(handle)
            try:
                write(keeper)  # type: ignore[arg-type]
            except Exception as error:
                if keeper.error is not None and keeper.error is not error:
                    raise keeper.error from error
                raise
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(json_ready(data), indent=2, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[int]]:
    """The (line, event) pairs of an append-only JSON-lines log, and the numbers of the lines that
    do not hold a JSON object (a process killed mid-write leaves a partial last line)."""
    events, bad_lines = [], []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if isinstance(event, dict) and line.endswith("\n"):
                events.append((line, event))
            else:
                bad_lines.append(number)
    return events, bad_lines


def read_summary(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """``summary.json`` of a run dir, or None with the reason it cannot be used ("" if absent)."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return None, ""
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"summary.json unreadable: {type(error).__name__}: {error}"
    if not isinstance(summary, dict):
        return None, "summary.json unreadable: not a JSON object"
    return summary, ""


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json_atomic(run_dir / SUMMARY_FILE, summary)


# ----------------------------------------------------------------------------------------------
# The job key

# Config keys that do not change a run's result, so they are left out of the job key.
NON_RESULT_KEYS = ("logger", "paths", "experiment", "task_name", "tune")
NON_RESULT_TRAINER_KEYS = ("progress", "log_every", "checkpoint_every", "keep_checkpoints", "resume", "device")
KEY_LENGTH = 16


def resolved_config(cfg: DictConfig, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """A composed config as plain, resolved data, without ``hydra`` and the top-level keys
    ``leave_out`` (what job keys and the batched launcher's population signature compare)."""
    container: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra" or key in leave_out:
            continue
        value = cfg[key]
        container[str(key)] = (
            OmegaConf.to_container(value, resolve=True, enum_to_str=True) if OmegaConf.is_config(value) else value
        )
    return container


def job_key(cfg: DictConfig) -> str:
    """A hash of the resolved config that decides the result (everything but the logger, the paths
    and the progress display)."""
    container = resolved_config(cfg, NON_RESULT_KEYS)
    trainer = dict(container.get("trainer", {}))
    for key in NON_RESULT_TRAINER_KEYS:
        trainer.pop(key, None)
    container["trainer"] = trainer
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def write_job_key(run_dir: Path, key: str) -> None:
    if read_job_key(run_dir) != key:  # unchanged files stay untouched (a finished job re-run in place)
        write_text_atomic(run_dir / KEY_FILE, key + "\n")


def read_job_key(run_dir: Path) -> str | None:
    """The job key stored in ``run_dir``; None when absent or not a key (a corrupt file)."""
    try:
        key = (run_dir / KEY_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    is_key = len(key) == KEY_LENGTH and all(c in "0123456789abcdef" for c in key)
    return key if is_key else None


# ----------------------------------------------------------------------------------------------
# One process per run dir


class RunDirInUse(MemexpError):
    """Another live process trains in this run dir."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    slurm_job: str  # "" outside Slurm

    @classmethod
    def me(cls) -> LockHolder:
        return cls(os.getpid(), socket.gethostname(), os.environ.get("SLURM_JOB_ID", ""))

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        fields = dict(item.partition("=")[::2] for item in text.split())
        try:
            return cls(int(fields["pid"]), fields["host"], fields.get("slurm_job", ""))
        except (KeyError, ValueError):
            return None

    def text(self) -> str:
        return f"pid={self.pid} host={self.host} slurm_job={self.slurm_job}\n"

    def is_alive(self) -> bool:
        """Whether the holder may still run. Another host's process cannot be checked and counts as
        alive, except a run of our own Slurm job: Slurm requeues a job only after it ended."""
        me = LockHolder.me()
        if self.slurm_job and self.slurm_job == me.slurm_job:
            return False
        if self.host != me.host:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class RunDirLock:
    """``with RunDirLock(run_dir):`` one training process per run dir. The lock file holds the
    holder's pid and host; a second process fails at once naming the holder; a lock left by a dead
    process (``kill -9``, a node failure) is taken over with a warning."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.me = LockHolder.me()

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(3):  # a takeover can race another one: try again, then give up
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(self.me.text())
            return
        raise RunDirInUse(f"run dir {self.path.parent} is in use (lock file {self.path} keeps being taken)")

    def _take_over_if_stale(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        holder = LockHolder.parse(text)
        if holder is not None and holder.is_alive():
            raise RunDirInUse(
                f"run dir {self.path.parent} is in use by pid {holder.pid} on host {holder.host} "
                f"(lock file {self.path}; delete it only if that process is gone)"
            )
        who = f"pid {holder.pid} on host {holder.host}" if holder else f"unreadable content {text[:40]!r}"
        warnings.warn(f"taking over the stale lock {self.path} ({who}: no such process)", stacklevel=3)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        try:
            if LockHolder.parse(self.path.read_text()) == self.me:
                self.path.unlink()
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------------------------
# Sweeps: which jobs `train -m <overrides>` makes


def sweep_overrides(hydra: Mapping[str, Any]) -> list[str]:
    """The overrides a sweep expands, from its ``hydra`` node (a composed config's or the one in
    ``multirun.yaml``): ``hydra.sweeper.params`` (e.g. from an experiment preset) first, then the
    command line's, as Hydra's basic sweeper takes them."""
    params = (hydra.get("sweeper") or {}).get("params") or {}
    task = (hydra.get("overrides") or {}).get("task") or []
    return [f"{key}={value}" for key, value in params.items()] + [str(item) for item in task]


def expand_sweep(hydra: Mapping[str, Any]) -> list[list[str]] | None:
    """The override list of every job of a sweep, from its ``hydra`` node; None when it cannot be
    known without running it (another sweeper, e.g. Optuna, or a sweep the basic sweeper rejects)."""
    from memexp import hydra_compat

    if not str((hydra.get("sweeper") or {}).get("_target_", "")).endswith("BasicSweeper"):
        return None
    try:
        return hydra_compat.expand_basic_sweep(sweep_overrides(hydra))
    except Exception:  # noqa: BLE001 - an override we cannot expand only means "jobs unknown"
        return None


@dataclass
class Job:
    overrides: list[str]  # as Hydra's sweeper hands them to the job (its .hydra/overrides.yaml)
    config: DictConfig  # the job's composed config, exactly as `train -m` runs it


@dataclass
class Sweep:
    config: DictConfig  # the sweep-level config (what Hydra saves as multirun.yaml)
    jobs: list[Job]


def compose_sweep(overrides: list[str], config_name: str = "train", config_dir: str | None = None) -> Sweep:
    """Every job `memexp train -m <overrides>` would run, each with its composed config; nothing is
    run or written. Raises Hydra's errors for bad overrides, and MemexpError when the sweep's jobs
    cannot be listed (a sweeper other than the basic one)."""
    from memexp import hydra_compat
    from memexp.train import config_dir as default_config_dir
    from memexp.train import register_configs

    register_configs()
    composer = hydra_compat.SweepComposer(config_dir or default_config_dir(), config_name, task_name="train")
    cfg = composer.sweep_config(overrides)
    if not str(cfg.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        raise MemexpError(f"the jobs of sweeper {cfg.hydra.sweeper._target_} are not known before it runs")
    jobs = hydra_compat.expand_basic_sweep(sweep_overrides(cfg.hydra))
    return Sweep(cfg, [Job(job, composer.job_config(cfg, job)) for job in jobs])
