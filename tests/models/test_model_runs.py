"""End to end through the CLI: a ViT on the offline digits, a GPT on the offline text, missing data."""

from __future__ import annotations

import json
import math

import pytest

from memexp import cli


def run_cli(*args: str) -> int:
    try:
        return cli.main(["train", *args])
    except SystemExit as stop:  # memexp exits with 2 on bad input
        return int(stop.code or 0)


def test_vit_trains_on_digits(tmp_path):
    run_dir = tmp_path / "vit"
    code = run_cli(
        "optimizer=adamw",
        "model=vit",
        "model.depth=2",
        "model.embed_dim=32",
        "model.num_heads=4",
        "trainer=quick",
        "trainer.max_steps=6",
        "trainer.eval_every=0",
        "trainer.eval_examples=64",
        "logger=none",
        "trainer.progress=off",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 6
    assert 0.0 <= summary["test/acc"] <= 1.0 and math.isfinite(summary["gap/loss"])


def test_gpt_trains_on_the_offline_text_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMEXP_DATA", str(tmp_path / "data"))
    run_dir = tmp_path / "gpt"
    code = run_cli(
        "optimizer=adamw",
        "model=gpt",
        "data.block_size=32",
        "data.eval_blocks=8",
        "data.max_tokens=100000",
        "trainer=quick",
        "trainer.batch_size=4",
        "trainer.max_steps=6",
        "trainer.eval_every=0",
        "logger=none",
        "trainer.progress=off",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    # Perplexity is exp(loss); an untrained byte model sits near the uniform 256.
    assert summary["test/ppl"] == pytest.approx(math.exp(summary["test/loss"]), rel=1e-9)
    assert 20 < summary["train/ppl"] < 400
    assert summary["gap/ppl_ratio"] == pytest.approx(summary["test/ppl"] / summary["train/ppl"], rel=1e-9)
    assert list((tmp_path / "data" / "stdlib_text").glob("*.byte.u16"))


@pytest.mark.parametrize("data", ["cifar10", "mnist", "shakespeare_char"])
def test_missing_data_exits_non_zero_and_writes_nothing(tmp_path, monkeypatch, capsys, data):
    monkeypatch.setenv("MEMEXP_DATA", str(tmp_path / "data"))
    model = "model=gpt_nano" if data == "shakespeare_char" else "model=resnet20"
    run_dir = tmp_path / "run"
    code = run_cli(model, f"data={data}", "logger=none", f"hydra.run.dir={run_dir}")
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("memexp: error:") and str(tmp_path / "data") in error
    assert not run_dir.exists() and not (tmp_path / "data").exists()


def test_gpt_on_image_data_says_which_data_to_use(tmp_path, capsys):
    code = run_cli("model=gpt_nano", "data=digits", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and "data=stdlib_text" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
