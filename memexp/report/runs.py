"""Reading runs: a run directory as ``memexp train`` writes it, found under Hydra multirun dirs.

A run directory holds ``.hydra/{config,overrides,hydra}.yaml``, ``metrics.jsonl`` (one JSON object
per log event, with ``step``) and ``summary.json`` (``status``, ``step`` and the final metrics).
Every run found becomes a :class:`RunRecord` with one of the statuses below; nothing a crashed,
killed or half-written run leaves behind stops the report. A multirun dir's ``multirun.yaml`` also
says which jobs the sweep launched, so jobs with no run dir at all are reported as ``missing``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from memexp import rundir
from memexp.errors import MemexpError
from memexp.rundir import Status
from memexp.splits import EVAL_PREFIXES

# The report's statuses (memexp.rundir.Status): a summary's "running" is reported as incomplete.
FINISHED, DIVERGED, FAILED, INCOMPLETE, MISSING, NOT_REACHED = (
    Status.FINISHED,
    Status.DIVERGED,
    Status.FAILED,
    Status.INCOMPLETE,
    Status.MISSING,
    Status.NOT_REACHED,
)
STATUSES = (FINISHED, DIVERGED, FAILED, INCOMPLETE, MISSING, NOT_REACHED)

# History keys that are bookkeeping, not results: never a "final metric" (``train/batch_loss`` is a
# running mean over the last log interval; ``train/loss`` is the measured one).
BOOKKEEPING_KEYS = frozenset({"step", "epoch", "lr", "train/batch_loss"})
# Final values taken from summary.json: the gap triple and the cost.
SUMMARY_PREFIXES = EVAL_PREFIXES
SUMMARY_EXTRA_KEYS = ("wall_time_s",)
# Directories never searched for runs (a run's own outputs, or a previous report).
SKIP_DIRS = frozenset({".hydra", "checkpoints", "wandb", ".submitit", "report", "__pycache__"})


@dataclass
class MetricTrace:
    """One metric's values over steps, sorted by step (a resumed run's replayed steps: last wins)."""

    steps: np.ndarray
    values: np.ndarray


@dataclass
class RunRecord:
    source: str  # the run dir, the W&B run path, or for a missing job the sweep dir and its overrides
    status: str
    seed: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)  # key -> value as typed on the command line
    choices: dict[str, str] = field(default_factory=dict)  # config group -> chosen option (Hydra's choices)
    config: dict[str, Any] = field(default_factory=dict)  # flattened resolved config: "optimizer.lr" -> 0.1
    final: dict[str, float] = field(default_factory=dict)  # final metrics
    history: dict[str, MetricTrace] = field(default_factory=dict)
    step: int | None = None
    max_steps: int | None = None
    detail: str = ""  # why the run is not finished, or what was odd about its files

    def setting(self, key: str) -> str:
        """The value this run used for ``key`` (an override key such as ``optimizer`` or
        ``optimizer.lr``), canonicalized so that runs from different sweeps compare equal."""
        if key in self.choices:
            return str(self.choices[key])
        if key in self.config:
            return format_value(self.config[key])
        if key in self.overrides:
            return self.overrides[key]
        return "-"


def format_value(value: Any) -> str:
    """A config leaf as it would be typed in an override (``true``, ``null``, ``0.1``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def to_float(value: Any) -> float:
    """A logged number; the logger writes non-finite floats as the strings "nan", "inf", "-inf"."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and value in ("nan", "inf", "-inf")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists stay whole leaves."""
    if not isinstance(node, dict):
        return {prefix: node} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def parse_override(text: str) -> tuple[str, str]:
    """``+optimizer.lr=0.1`` -> (``optimizer.lr``, ``0.1``); a deletion ``~key`` has value ``-``."""
    key, sep, value = text.partition("=")
    return key.lstrip("+~"), (value if sep else "-")


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    return dict(parse_override(str(item)) for item in items)


def history_from_events(events: Iterable[dict[str, Any]]) -> dict[str, MetricTrace]:
    by_metric: dict[str, dict[int, float]] = {}
    for event in events:
        step = event.get("step")
        if not isinstance(step, int):
            continue
        for key, value in event.items():
            if key != "step" and is_number(value):
                by_metric.setdefault(key, {})[step] = to_float(value)
    traces = {}
    for key, points in by_metric.items():
        steps = np.asarray(sorted(points), dtype=np.int64)
        traces[key] = MetricTrace(steps, np.asarray([points[s] for s in steps.tolist()], dtype=np.float64))
    return traces


def read_events(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The events of a metrics.jsonl; a truncated or corrupt line (a run killed mid-write) is
    skipped and reported, not fatal."""
    events, bad_lines = rundir.read_jsonl(path)
    note = f"metrics.jsonl: skipped unreadable line(s) {bad_lines}" if bad_lines else ""
    return [event for _, event in events], note


def final_metrics(summary: dict[str, Any], history: dict[str, MetricTrace]) -> dict[str, float]:
    """The summary's train/val/gap values and wall time, plus the last logged value of every other
    namespaced metric (``geom/...`` and whatever else a metrics module logs)."""
    final = {
        key: to_float(value)
        for key, value in summary.items()
        if is_number(value) and (key.startswith(SUMMARY_PREFIXES) or key in SUMMARY_EXTRA_KEYS)
    }
    for key, trace in history.items():
        if key not in final and key not in BOOKKEEPING_KEYS and "/" in key and trace.values.size:
            final[key] = float(trace.values[-1])
    return final


def per_tensor_metrics(names: Iterable[str]) -> set[str]:
    """The per-tensor breakdowns among ``names``: ``geom/weight_norm/fc1.weight`` when the aggregate
    ``geom/weight_norm`` is logged too (memexp.metrics logs both). A model has dozens of tensors, so
    by default a report shows the aggregates only."""
    names = set(names)
    return {name for name in names if name.count("/") >= 2 and name.rsplit("/", 1)[0] in names}


# libyaml's loader when PyYAML was built with it: hydra.yaml is long and a sweep has many runs.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> Any:
    with path.open() as handle:
        return yaml.load(handle, Loader=YAML_LOADER)


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / rundir.SUMMARY_FILE).is_file()


def read_hydra_dir(record: RunRecord, hydra_dir: Path) -> list[str]:
    """Fill the record's config, overrides and group choices from ``.hydra/``; returns problems."""
    notes = []
    try:
        if (hydra_dir / "config.yaml").is_file():
            record.config = flatten(read_yaml(hydra_dir / "config.yaml") or {})
        if (hydra_dir / "overrides.yaml").is_file():
            overrides = read_yaml(hydra_dir / "overrides.yaml") or []
            if isinstance(overrides, list):
                record.overrides = parse_overrides(overrides)
            else:
                notes.append(".hydra/overrides.yaml is not a list of overrides")
        if (hydra_dir / "hydra.yaml").is_file():
            hydra = (read_yaml(hydra_dir / "hydra.yaml") or {}).get("hydra") or {}
            choices = (hydra.get("runtime") or {}).get("choices") or {}
            record.choices = {key: format_value(value) for key, value in choices.items()}
    except (OSError, yaml.YAMLError, AttributeError) as error:
        notes.append(f".hydra unreadable: {type(error).__name__}: {error}")
    seed = record.config.get("seed", record.overrides.get("seed"))
    try:
        record.seed = int(seed) if seed is not None else None
    except (TypeError, ValueError):
        notes.append(f"seed {seed!r} is not an integer")
    return notes


def apply_summary(record: RunRecord, summary: dict[str, Any]) -> str:
    """Status, steps and final metrics from the summary; returns why the run is not finished."""
    step, max_steps = summary.get("step"), summary.get("max_steps")
    record.step = step if isinstance(step, int) else record.step
    record.max_steps = max_steps if isinstance(max_steps, int) else None
    record.final = final_metrics(summary, record.history)
    status = summary.get("status")
    progress = f"step {record.step}/{record.max_steps if record.max_steps is not None else '?'}"
    if status in (FINISHED, DIVERGED, FAILED):
        record.status = status
    if status == DIVERGED:
        return f"non-finite loss, stopped at {progress}"
    if status == FAILED:
        return f"{summary.get('error', 'failed')} at {progress}"
    if status == Status.RUNNING:
        return f"status 'running' at {progress}: still running, or killed without a final summary"
    if status != FINISHED:
        return f"unknown status {status!r} in summary.json"
    return ""


def load_run_dir(run_dir: Path) -> RunRecord:
    """One run directory. Never raises for a broken run: it comes back with a status and a detail."""
    record = RunRecord(source=str(run_dir), status=INCOMPLETE)
    notes = read_hydra_dir(record, run_dir / ".hydra")

    events: list[dict[str, Any]] = []
    metrics_path = run_dir / rundir.METRICS_FILE
    if metrics_path.is_file():
        try:
            events, note = read_events(metrics_path)
        except OSError as error:
            note = f"metrics.jsonl unreadable: {error}"
        notes.append(note)
    record.history = history_from_events(events)
    record.step = max((int(e["step"]) for e in events if isinstance(e.get("step"), int)), default=None)

    summary, problem = rundir.read_summary(run_dir)
    if summary is not None:
        notes.insert(0, apply_summary(record, summary))
    elif problem:
        notes.insert(0, problem)
    else:
        where = f"metrics.jsonl stops at step {record.step}" if record.step is not None else "no metrics"
        notes.insert(0, f"no summary.json ({where}): never started, or killed before its first summary")
    record.detail = "; ".join(note for note in notes if note)
    return record


# ----------------------------------------------------------------------------------------------
# Sweeps: which jobs a multirun launched


def expected_jobs(multirun_yaml: Path) -> list[list[str]] | None:
    """The override lists of the jobs this multirun launched (memexp.rundir.expand_sweep), or None
    when it cannot be known (another sweeper, e.g. Optuna, or an unreadable multirun.yaml)."""
    try:
        hydra = (read_yaml(multirun_yaml) or {}).get("hydra") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return rundir.expand_sweep(hydra)


def missing_jobs(sweep_dir: Path, found: list[RunRecord]) -> list[RunRecord]:
    """Jobs the sweep launched (per multirun.yaml) with no run dir under ``sweep_dir``."""
    jobs = expected_jobs(sweep_dir / "multirun.yaml")
    if jobs is None:
        return []
    present = [parse_overrides_sorted(run.overrides) for run in found]
    missing = []
    for job in jobs:
        overrides = parse_overrides(job)
        key = parse_overrides_sorted(overrides)
        if key in present:
            present.remove(key)  # one run dir accounts for one job
            continue
        seed = overrides.get("seed")
        record = RunRecord(
            source=f"{sweep_dir} [{' '.join(job)}]",
            status=MISSING,
            seed=int(seed) if seed is not None and seed.lstrip("-").isdigit() else None,
            overrides=overrides,
            detail="launched by the sweep (multirun.yaml) but no run dir holds it",
        )
        # Its settings are those of a run of the same job with another seed, when there is one: an
        # override typed "lr=1000" is 1000.0 in the composed config, and must land in that group.
        sibling = next((run for run in found if same_job_but_seed(run.overrides, overrides)), None)
        if sibling is not None:
            record.config = {**sibling.config, "seed": record.seed}
            record.choices = dict(sibling.choices)
        missing.append(record)
    return missing


def same_job_but_seed(a: dict[str, str], b: dict[str, str]) -> bool:
    return {k: v for k, v in a.items() if k != "seed"} == {k: v for k, v in b.items() if k != "seed"}


def parse_overrides_sorted(overrides: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(overrides.items()))


def find_runs(paths: Iterable[str | Path], progress: Any = None) -> list[RunRecord]:
    """Every run under ``paths`` (run dirs or multirun dirs, searched recursively), plus the jobs
    each multirun's ``multirun.yaml`` promises that have no run dir."""
    records: list[RunRecord] = []
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.is_dir():
            raise MemexpError(f"PATH {str(raw)!r} is not a directory (a run dir or a multirun dir)")
        run_dirs: list[Path] = []
        sweep_dirs: list[Path] = []
        if is_run_dir(root):
            run_dirs.append(root)
        else:
            for current, dirnames, _ in os.walk(root):
                here = Path(current)
                if (here / "multirun.yaml").is_file():
                    sweep_dirs.append(here)
                if is_run_dir(here):
                    run_dirs.append(here)
                    dirnames[:] = []  # a run's checkpoints/ and wandb/ hold no runs
                else:
                    # hidden dirs (.git, .venv, a building report) hold no runs
                    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        if not run_dirs and not sweep_dirs:
            raise MemexpError(f"PATH {str(raw)!r} holds no runs (a run dir has .hydra/config.yaml or summary.json)")
        loaded = []
        for run_dir in sorted(run_dirs, key=natural_key):
            if run_dir.resolve() in seen:  # the same run reached through two PATHs counts once
                continue
            seen.add(run_dir.resolve())
            loaded.append(load_run_dir(run_dir))
            if progress is not None:
                progress()
        for sweep_dir in sweep_dirs:
            if sweep_dir.resolve() in seen:
                continue
            seen.add(sweep_dir.resolve())
            inside = [
                r
                for r in records + loaded
                if r.status != MISSING and Path(r.source).resolve().is_relative_to(sweep_dir.resolve())
            ]
            loaded.extend(missing_jobs(sweep_dir, inside))
        records.extend(loaded)
    return records


def natural_key(path: Path) -> tuple[Any, ...]:
    """Sort multirun job dirs 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)
