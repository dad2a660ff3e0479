"""Shared helpers: run the real `memexp` command in a subprocess, compose configs in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def memexp_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        # Keep W&B's caches and settings inside the test's directory.
        WANDB_CACHE_DIR=str(tmp_path / ".wandb-cache"),
        WANDB_CONFIG_DIR=str(tmp_path / ".wandb-config"),
        WANDB_DATA_DIR=str(tmp_path / ".wandb-data"),
        HYDRA_FULL_ERROR="0",
    )
    env.pop("WANDB_API_KEY", None)
    return env


def run_memexp(
    *args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`memexp <args>` exactly as a user runs it (the installed console script when present)."""
    script = Path(sys.executable).parent / "memexp"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "memexp.cli"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=env or memexp_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def compose() -> Iterator:
    """compose(overrides) -> the DictConfig `memexp train <overrides>` would run with."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import memexp.train as train_module

    train_module.register_configs()
    with initialize_config_dir(config_dir=train_module.config_dir(), version_base="1.3"):
        yield lambda overrides=(): hydra_compose(config_name="train", overrides=list(overrides))
