"""Checkpoints: written atomically (memexp.rundir), the last K kept, a corrupt file skipped for the
previous one.

A checkpoint holds everything needed to continue a run exactly: model, optimizer (every memory
buffer), LR scheduler, step, data iterator position and the python / numpy / torch RNG states.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memexp.rundir import write_atomic

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    # weights_only=False: memexp's own files hold numpy / python RNG states, not only tensors.
    return torch.load(path, map_location=map_location, weights_only=False)


class CheckpointManager:
    def __init__(self, directory: Path, keep: int) -> None:
        self.directory, self.keep = directory, keep

    def path_for(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = self.path_for(step)
        write_atomic(path, lambda handle: torch.save(state, handle))
        for _, old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint that loads; a corrupt or truncated one is skipped with a warning."""
        for step, path in reversed(self.checkpoints()):
            try:
                state = load(path, map_location)
            except Exception as error:  # noqa: BLE001 - any unreadable file means "try the previous one"
                warnings.warn(f"checkpoint {path} is unreadable ({error}); trying the previous one", stacklevel=2)
                continue
            if state.get("step") != step:
                warnings.warn(f"checkpoint {path} holds step {state.get('step')}, skipped", stacklevel=2)
                continue
            return state
        return None
