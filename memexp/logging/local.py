"""The local log, always on: ``metrics.jsonl`` (one JSON object per log event, with ``step``) and
``summary.json`` in the run directory, next to Hydra's ``.hydra/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memexp.logging.base import json_ready, write_json_atomic


class LocalLogger:
    essential = True  # if the local log cannot be written, the run must fail loudly

    def __init__(self, run_dir: Path) -> None:
        self.metrics_path = run_dir / "metrics.jsonl"
        self.summary_path = run_dir / "summary.json"
        self._handle = self.metrics_path.open("a", buffering=1)  # line-buffered: `tail -f` works

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._handle.write(json.dumps(json_ready({"step": step, **metrics})) + "\n")

    def rewind(self, step: int) -> None:
        """Drop events with a step after ``step``: a run resumed from a checkpoint logs them again."""
        self._handle.flush()
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self._handle.close()
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.metrics_path)
        self._handle = self.metrics_path.open("a", buffering=1)  # line-buffered: `tail -f` works

    def flush(self) -> None:
        self._handle.flush()

    def summary(self, summary: dict[str, Any]) -> None:
        self._handle.flush()
        write_json_atomic(self.summary_path, summary)

    def close(self) -> None:
        self._handle.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The events of a ``metrics.jsonl`` file, in order."""
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]
