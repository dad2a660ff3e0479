"""End-to-end runs of `memexp train`: files written, losses, gaps, W&B offline files, sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memexp.logging import read_metrics
from tests.conftest import run_memexp
from tests.logging.wandb_file import offline_run_files, read_wandb_file

GAP_KEYS = {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "gap/loss", "gap/acc"}


def only_run_dir(root: Path) -> Path:
    runs = [path for path in root.iterdir() if path.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_default_run_learns_and_writes_every_file(tmp_path: Path) -> None:
    result = run_memexp("train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path / "outputs" / "train" / "runs")
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.jsonl", "summary.json", "wandb_id.txt"):
        assert (run_dir / name).is_file(), name

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["step"] == 600
    assert GAP_KEYS <= set(summary)
    assert summary["gap/loss"] == pytest.approx(summary["test/loss"] - summary["train/loss"], abs=1e-12)
    assert summary["gap/acc"] == pytest.approx(summary["test/acc"] - summary["train/acc"], abs=1e-12)
    assert summary["test/acc"] > 0.9 and summary["val/acc"] > 0.9  # digits with an MLP: well above chance (0.1)

    events = read_metrics(run_dir / "metrics.jsonl")
    batch_losses = [event["train/batch_loss"] for event in events if "train/batch_loss" in event]
    assert batch_losses[0] > 1.5 and batch_losses[-1] < 0.2 * batch_losses[0]
    evaluations = [event for event in events if "val/loss" in event]
    assert [event["step"] for event in evaluations] == [100, 200, 300, 400, 500, 600]
    assert evaluations[-1]["val/loss"] < evaluations[0]["val/loss"]
    assert (run_dir / "checkpoints" / "step_00000600.pt").is_file()

    # The W&B offline run: read the file W&B itself wrote.
    [wandb_file] = offline_run_files(run_dir)
    wandb_run = read_wandb_file(wandb_file)
    assert wandb_run.run_id == (run_dir / "wandb_id.txt").read_text().strip()
    logged = set().union(*wandb_run.history)
    assert {"train/batch_loss", "lr", "step"} | GAP_KEYS <= logged
    assert wandb_run.summary["status"] == "finished"
    assert wandb_run.summary["gap/acc"] == pytest.approx(summary["gap/acc"])
    assert wandb_run.config["optimizer"]["name"] == "sgd"
    assert wandb_run.config["trainer"]["precision"] == "fp32"
    assert wandb_run.exit_code == 0
    assert "memexp run: finished" in result.stdout


def test_multirun_runs_each_job_in_its_own_dir_and_one_wandb_group(tmp_path: Path) -> None:
    result = run_memexp("train", "-m", "optimizer=sgd,adamw", "trainer=quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = only_run_dir(tmp_path / "outputs" / "train" / "multiruns")
    jobs = sorted(path for path in sweep.iterdir() if path.is_dir())
    assert [job.name for job in jobs] == ["0", "1"]
    groups, names = set(), []
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["step"] == 20
        wandb_run = read_wandb_file(offline_run_files(job)[0])
        groups.add(wandb_run.group)
        names.append(wandb_run.name)
    assert groups == {f"train-{sweep.name}"}
    assert names == ["optimizer=sgd,trainer=quick", "optimizer=adamw,trainer=quick"]


def test_diverging_run_ends_with_status_diverged_and_exit_zero(tmp_path: Path) -> None:
    result = run_memexp(
        "train",
        "optimizer.lr=1e6",
        "logger=none",
        "trainer.lr_schedule=constant",
        "trainer.warmup_steps=0",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["step"] < 600
    assert "non-finite training loss" in result.stdout


def test_epochs_set_the_number_of_steps(tmp_path: Path) -> None:
    result = run_memexp(
        "train",
        "trainer.epochs=2",
        "trainer.batch_size=100",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # 1,797 digits, 25% held out as test (449) and 15% of the rest as validation (202) -> 1,146 training images
    assert summary["step"] == 2 * (1146 // 100)


def test_a_wandb_failure_is_a_warning_and_the_local_log_goes_on(tmp_path: Path) -> None:
    from tests.conftest import memexp_env

    env = memexp_env(tmp_path)
    env["WANDB_MODE"] = "online"  # no API key here: W&B cannot start
    result = run_memexp("train", "trainer=quick", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "memexp: warning: W&B is disabled for this run" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and GAP_KEYS <= set(summary)
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")
