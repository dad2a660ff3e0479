"""The `memexp` command as a user runs it: subcommands, Hydra's flags, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import memexp_env, run_memexp


def test_help_lists_subcommands_without_importing_torch(tmp_path: Path) -> None:
    code = (
        "import sys, memexp.cli; rc = memexp.cli.main(['--help']); "
        "assert rc == 0; assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'heavy import'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "usage: memexp" in result.stdout


def test_unknown_subcommand_fails(tmp_path: Path) -> None:
    result = run_memexp("trian", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown command 'trian'" in result.stderr


def test_hydra_flags_work_unchanged(tmp_path: Path) -> None:
    job = run_memexp("train", "--cfg", "job", "optimizer=adamw", cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    assert "name: adamw" in job.stdout and "beta2: 0.999" in job.stdout
    hydra_help = run_memexp("train", "--help", cwd=tmp_path)
    assert hydra_help.returncode == 0
    [optimizer_line] = [line for line in hydra_help.stdout.splitlines() if line.startswith("optimizer: ")]
    assert {"sgd", "adamw", "lion"} <= set(optimizer_line.removeprefix("optimizer: ").split(", "))
    info = run_memexp("train", "--info", "searchpath", cwd=tmp_path)
    assert info.returncode == 0 and "conf" in info.stdout
    assert not (tmp_path / "outputs").exists(), "inspection flags must not create run dirs"


def test_shell_completion(tmp_path: Path) -> None:
    install = run_memexp("train", "--shell-completion", "install=bash", cwd=tmp_path)
    assert install.returncode == 0 and "complete -o nospace" in install.stdout
    # What the installed completion script runs when the user presses TAB after `memexp train optim`.
    env = memexp_env(tmp_path)
    env.update(COMP_LINE="memexp train optim", COMP_POINT="18")
    query = run_memexp("-sc", "query=bash", cwd=tmp_path, env=env)
    assert query.returncode == 0, query.stderr
    assert "optimizer=" in query.stdout.split()
    env.update(COMP_LINE="memexp train optimizer=", COMP_POINT="24")
    options = run_memexp("-sc", "query=bash", cwd=tmp_path, env=env).stdout.split()
    assert {"optimizer=sgd", "optimizer=adamw"} <= set(options)


def test_bad_value_exits_nonzero_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    result = run_memexp("train", "optimizer.lr=-1", cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "memexp: error: optimizer.lr=-1.0 is not allowed: a number > 0"
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.jsonl"))
    assert not list(tmp_path.glob("outputs/train/runs/*")), "no run dir may be left behind"
    assert not list(tmp_path.rglob("wandb")), "no W&B run may be started"


def test_unknown_option_lists_the_available_ones(tmp_path: Path) -> None:
    result = run_memexp("train", "optimizer=nope", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'optimizer/nope'" in result.stderr
    assert "Available options in 'optimizer'" in result.stderr
    assert "\tsgd" in result.stderr and "\tadamw" in result.stderr
    assert "schema" not in result.stderr.split("Available options")[1].split("Config search path")[0]
    assert not (tmp_path / "outputs").exists()
