"""A `memexp tune` study dir as the report sees it: which runs are the confirmation runs, which
override keys define the arms, and the tuning summary shown next to the comparison (tune.json's
format is written by memexp/tune.py; only its fields are read here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memexp.errors import MemexpError
from memexp.report.runs import parse_override
from memexp.rundir import TUNE_JSON


@dataclass
class TuneStudy:
    path: Path
    data: dict[str, Any]

    @property
    def arms(self) -> dict[str, Any]:
        return self.data.get("arms") or {}

    @property
    def confirmation_dirs(self) -> list[Path]:
        dirs = [
            self.path / run_dir
            for arm in self.arms.values()
            for run_dir in (arm.get("confirmation") or {}).get("run_dirs") or []
            if run_dir
        ]
        if not dirs:
            raise MemexpError(
                f"PATH {str(self.path)!r} is a tune study with no confirmation runs yet (re-run the same "
                "memexp tune command to finish it, or pass --all-runs to report the search runs)"
            )
        return dirs

    @property
    def arm_keys(self) -> list[str]:
        """The override keys that define the arms (e.g. ``optimizer``): the report groups by them,
        not by the chosen values that differ between arms as a consequence."""
        keys: list[str] = []
        for arm in self.arms.values():
            for override in arm.get("overrides") or []:
                key = parse_override(override)[0]
                if key not in keys:
                    keys.append(key)
        return keys

    def summary_lines(self) -> list[str]:
        selection = self.data.get("selection") or {}
        lines = [
            f"These are the confirmation runs of the tune study in `{self.path}` (fresh seeds "
            f"{self.data.get('confirm_seeds')}); settings were chosen on the validation split by "
            f"{selection.get('objective')} `{selection.get('metric')}` over tuning seeds "
            f"{self.data.get('tuning_seeds')} "
            f"(trials per arm: {self.data.get('trials_per_arm')}). See tune.md there.",
            "",
            "| arm | chosen | on an edge |",
            "| --- | --- | --- |",
        ]
        for label, arm in self.arms.items():
            chosen = arm.get("chosen") or {}
            chosen_text = ", ".join(f"{k}={v}" for k, v in chosen.items()) or "none (every trial diverged)"
            edge = ", ".join(f"{k} ({side})" for k, side in (arm.get("edge") or {}).items()) or "no"
            lines.append(f"| {label} | {chosen_text} | {edge} |")
        return lines


def read_tune_study(path: Path) -> TuneStudy | None:
    file = path / TUNE_JSON
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MemexpError(f"{file} is unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise MemexpError(f"{file} is not a memexp tune.json")
    return TuneStudy(path, data)
