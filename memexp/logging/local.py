"""The local log, always on: ``metrics.jsonl`` (one JSON object per log event, with ``step``) and
``summary.json`` in the run directory (memexp.rundir), next to Hydra's ``.hydra/``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from memexp import rundir


class LocalLogger:
    essential = True  # if the local log cannot be written, the run must fail loudly

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.metrics_path = run_dir / rundir.METRICS_FILE
        self._handle = self.metrics_path.open("a", buffering=1)  # line-buffered: `tail -f` works

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._handle.write(json.dumps(rundir.json_ready({"step": step, **metrics})) + "\n")

    def rewind(self, step: int) -> None:
        """Drop events with a step after ``step`` (a run resumed from a checkpoint logs them again)
        and a partial line (a process killed mid-write); the rest stays byte for byte."""
        self._handle.flush()
        events, bad_lines = rundir.read_jsonl(self.metrics_path)
        if bad_lines:
            warnings.warn(
                f"{self.metrics_path}: dropped unreadable line(s) {bad_lines} (a process killed mid-write)",
                stacklevel=2,
            )
        kept = [line for line, event in events if event.get("step", 0) <= step]
        if bad_lines or len(kept) < len(events):
            self._handle.close()
            rundir.write_text_atomic(self.metrics_path, "".join(kept))
            self._handle = self.metrics_path.open("a", buffering=1)

    def flush(self) -> None:
        self._handle.flush()

    def summary(self, summary: dict[str, Any]) -> None:
        self._handle.flush()
        rundir.write_summary(self.run_dir, summary)

    def close(self) -> None:
        self._handle.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The events of a ``metrics.jsonl`` file, in order (unreadable lines left out)."""
    return [event for _, event in rundir.read_jsonl(path)[0]]
