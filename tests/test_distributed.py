"""Data parallel on 2 CPU processes (torchrun, gloo) equals one process on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memexp.logging import read_metrics
from tests.conftest import memexp_env, run_memexp

COMMON = [
    "trainer.max_steps=60",
    "trainer.eval_every=30",
    "trainer.log_every=5",
    "trainer.batch_size=64",
    "optimizer=adamw",
    "logger=none",
    "trainer.progress=off",
]


def test_two_processes_match_one_on_the_same_global_batch(tmp_path: Path) -> None:
    env = memexp_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    single = run_memexp("train", *COMMON, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path, env=env)
    assert single.returncode == 0, single.stderr
    double = run_memexp(
        "train", *COMMON, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path, env=env
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [e["step"] for e in one] == [e["step"] for e in two], "only rank 0 logs, each step once"
    for a, b in zip(one, two):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (a["step"], key)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 60
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir()] == ["step_00000060.pt"]


def test_batch_must_split_evenly_across_processes(tmp_path: Path) -> None:
    result = run_memexp("train", "trainer.devices=2", "trainer.batch_size=63", "logger=none", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().endswith("trainer.batch_size=63 is not allowed: a multiple of trainer.devices (2)")
    assert not (tmp_path / "outputs").exists()
