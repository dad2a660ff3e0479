"""Synthetic run directories in the exact layout ``memexp train`` writes (see memexp/train.py and
memexp/logging/local.py), with numbers the tests choose."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

RunWriter = Callable[..., Path]


def write_run(
    run_dir: Path,
    *,
    seed: int,
    overrides: dict[str, str] | None = None,
    choices: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    status: str | None = "finished",
    final: dict[str, float] | None = None,
    history: list[dict[str, Any]] | None = None,
    max_steps: int = 20,
    error: str | None = None,
) -> Path:
    """One run dir. ``overrides`` are the command-line overrides (seed is added); ``final`` the
    summary's metrics; ``history`` the metrics.jsonl events; ``status=None`` writes no summary."""
    overrides = {**(overrides or {}), "seed": str(seed)}
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    full_config = {"task_name": "train", "seed": seed, "optimizer": {"name": "sgd", "lr": 0.1}, **(config or {})}
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(full_config))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
    runtime_choices = {"optimizer": "sgd", "model": "mlp", "hydra/sweeper": "basic", **(choices or {})}
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": runtime_choices}}}))
    events = history if history is not None else []
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "checkpoints").mkdir()
    if status is not None:
        last_step = max((e["step"] for e in events), default=max_steps)
        summary = {
            "status": status,
            "step": last_step,
            "max_steps": max_steps,
            "run_dir": str(run_dir),
            "wall_time_s": 1.0,
            **(final or {}),
        }
        if error:
            summary["error"] = error
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def curve_history(
    loss_start: float, loss_end: float, steps: tuple[int, ...] = (10, 20), geom: float | None = None
) -> list[dict[str, Any]]:
    """Batch-loss events and eval events at ``steps``, losses falling linearly (test loss 10% above
    train), accuracy rising; a geom/sharpness metric when ``geom`` is given (its last value)."""
    events: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        t = (i + 1) / len(steps)
        train_loss = loss_start + (loss_end - loss_start) * t
        events.append({"step": step, "train/batch_loss": train_loss * 1.05, "lr": 0.1, "epoch": step / 40})
        eval_event = {
            "step": step,
            "train/loss": train_loss,
            "test/loss": train_loss * 1.1,
            "train/acc": 0.5 + 0.4 * t,
            "test/acc": 0.45 + 0.4 * t,
        }
        eval_event["gap/loss"] = eval_event["test/loss"] - eval_event["train/loss"]
        eval_event["gap/acc"] = eval_event["test/acc"] - eval_event["train/acc"]
        if geom is not None:
            eval_event["geom/sharpness"] = geom * t
        events.append(eval_event)
    return events


@pytest.fixture
def make_run() -> RunWriter:
    return write_run


def write_multirun_yaml(sweep_dir: Path, task_overrides: list[str]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    multirun = {
        "hydra": {
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
            "overrides": {"hydra": [f"hydra.sweep.dir={sweep_dir}"], "task": task_overrides},
        }
    }
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(multirun))
