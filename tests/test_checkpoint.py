"""Checkpoints: atomic, last K kept, corrupt ones skipped, and a resumed run continues exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memexp import checkpoint as ckpt
from memexp.config import Progress
from memexp.logging.progress import ProgressReporter
from memexp.train import build_run, check_config, train


def quiet(run) -> ProgressReporter:
    return ProgressReporter(run.max_steps, Progress.off)


def make_run(compose, overrides: list[str]):
    cfg = check_config(compose(["logger=none", "trainer.progress=off", *overrides]))
    return build_run(cfg)


def test_save_is_atomic_and_keeps_the_last_k(tmp_path: Path) -> None:
    manager = ckpt.CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30):
        manager.save({"step": step, "value": torch.tensor(float(step))}, step)
    assert [step for step, _ in manager.checkpoints()] == [20, 30]
    assert not list(tmp_path.glob("*.tmp")), "no temporary file may be left behind"
    assert manager.load_latest()["value"].item() == 30.0


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    manager = ckpt.CheckpointManager(tmp_path, keep=3)
    manager.save({"step": 1}, 1)
    path = manager.save({"step": 2, "payload": torch.arange(1000)}, 2)
    path.write_bytes(path.read_bytes()[:100])  # truncated, as after a crash mid-copy
    with pytest.warns(UserWarning, match="unreadable"):
        state = manager.load_latest()
    assert state["step"] == 1


def test_rng_state_round_trip() -> None:
    state = ckpt.rng_state()
    expected = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    ckpt.set_rng_state(state)
    again = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resumed_run_matches_an_uninterrupted_one_bit_for_bit(compose, tmp_path: Path, optimizer: str) -> None:
    overrides = [
        f"optimizer={optimizer}",
        "trainer.max_steps=60",
        "trainer.eval_every=20",
        "trainer.log_every=5",
        "trainer.checkpoint_every=25",
        "trainer.lr_schedule=cosine",
        "trainer.warmup_steps=5",
        "model.dropout=0.1",
    ]  # dropout: the torch RNG state must be restored too
    full = make_run(compose, overrides)
    full_summary = train(full, tmp_path / "full", [], quiet(full))

    # The interrupted run: stop after the step-25 checkpoint by training a copy with max_steps=25...
    first = make_run(compose, overrides)
    first.max_steps = 25
    first.scheduler = __import__("memexp.schedules", fromlist=["build_scheduler"]).build_scheduler(
        first.optimizer, first.cfg.trainer, 60
    )
    train(first, tmp_path / "resumed", [], quiet(first))
    checkpoints = ckpt.CheckpointManager(tmp_path / "resumed" / "checkpoints", 3).checkpoints()
    assert [step for step, _ in checkpoints] == [25]
    # ...then a fresh process-like start in the same run dir picks the checkpoint up.
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    resumed = make_run(compose, overrides)
    resumed_summary = train(resumed, tmp_path / "resumed", [], quiet(resumed))

    for key in ("train/loss", "val/loss", "test/loss", "train/acc", "val/acc", "test/acc", "gap/loss"):
        assert resumed_summary[key] == full_summary[key], key
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
