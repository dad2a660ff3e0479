"""The W&B side of `memexp report`: reading runs through the API (faked here: tests have no network)
and logging the report offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memexp.cli import main as memexp_main
from memexp.errors import MemexpError
from memexp.report import cli as report_cli
from memexp.report.runs import DIVERGED, FINISHED, INCOMPLETE
from memexp.report.wandb_source import WandbSpec, fetch_runs, parse_spec, record_from_wandb
from tests.report.conftest import RunWriter, curve_history


class FakeWandbRun:
    """The parts of ``wandb.apis.public.Run`` the report reads."""

    def __init__(self, name: str, seed: int, optimizer: str, status: str | None, state: str, test_loss: float) -> None:
        self.path = ["me", "memexp", name]
        self.state = state
        self.config = {
            "seed": seed,
            "optimizer": {"name": optimizer, "lr": 0.1 if optimizer == "sgd" else 0.001},
            "_wandb": {"internal": 1},
        }
        self.summary = {
            "_runtime": 3.0,
            "train/loss": 0.5,
            "test/loss": test_loss,
            "gap/loss": test_loss - 0.5,
            "step": 20,
            "max_steps": 20,
            **({"status": status} if status else {}),
        }
        self.rows = [
            {"_step": s, "step": s, "_runtime": 1.0, **e}
            for e in curve_history(2.0, 0.5, geom=seed + 1.0)
            for s in [e["step"]]
        ]

    def scan_history(self) -> list[dict[str, Any]]:
        return self.rows


def test_spec_parsing() -> None:
    assert parse_spec("me/memexp") == WandbSpec("me", "memexp", None)
    assert parse_spec("me/memexp:train-2026-11-25_10-00-00") == WandbSpec("me", "memexp", "train-2026-11-25_10-00-00")
    with pytest.raises(MemexpError, match="--wandb='memexp' is not allowed: ENTITY/PROJECT or ENTITY/PROJECT:GROUP"):
        parse_spec("memexp")


def test_wandb_run_becomes_a_record() -> None:
    record = record_from_wandb(FakeWandbRun("abc", 2, "adamw", "finished", "finished", 0.75))
    assert (record.source, record.status, record.seed, record.step) == ("wandb:me/memexp/abc", FINISHED, 2, 20)
    assert record.final["test/loss"] == 0.75 and record.final["geom/sharpness"] == 3.0
    assert record.setting("optimizer.name") == "adamw" and "_wandb.internal" not in record.config
    assert record.history["train/loss"].steps.tolist() == [10, 20]
    assert record_from_wandb(FakeWandbRun("d", 0, "sgd", "diverged", "finished", 1.0)).status == DIVERGED
    crashed = record_from_wandb(FakeWandbRun("c", 0, "sgd", None, "crashed", 1.0))
    assert crashed.status == "failed" and "W&B state 'crashed'" in crashed.detail
    assert record_from_wandb(FakeWandbRun("r", 0, "sgd", "running", "running", 1.0)).status == INCOMPLETE


def test_unreachable_api_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real client without an API key (HOME and W&B's config dir point at an empty directory).
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(MemexpError) as error:
        fetch_runs(parse_spec("me/memexp"))
    message = str(error.value)
    assert message.startswith("--wandb=me/memexp: cannot read the W&B API (")
    assert "network access and an API key" in message and "\n" not in message


def test_cli_reads_wandb_runs_next_to_local_ones(
    tmp_path: Path, make_run: RunWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = [
        FakeWandbRun(f"r{seed}{opt}", seed, opt, "finished", "finished", val)
        for opt, vals in (("sgd", (0.9, 1.0, 1.2)), ("adamw", (0.8, 0.8, 1.0)))
        for seed, val in enumerate(vals)
    ]
    requested: list[WandbSpec] = []

    def fake_fetch(spec: WandbSpec, advance: Any = None) -> list[Any]:
        requested.append(spec)
        return [record_from_wandb(run) for run in fake]

    monkeypatch.setattr(report_cli, "fetch_runs", fake_fetch)
    out = tmp_path / "out"
    assert memexp_main(["report", "--wandb", "me/memexp:sweep1", "--out", str(out), "--no-plots"]) == 0
    assert requested == [WandbSpec("me", "memexp", "sweep1")]
    text = (out / "report.md").read_text()
    # grouped by the optimizer's name, not by its (name-determined) learning rate
    assert "| test/loss | 0.8667 ± 0.1155 [0.5798, 1.154] | 1.033 ± 0.1528 [0.6539, 1.413] |" in text
    assert "### optimizer=adamw − optimizer=sgd (seeds 0, 1, 2)" in text
    assert "Inputs: `wandb:me/memexp:sweep1`" in text
    capsys.readouterr()
    assert memexp_main(["report", "--wandb", "me/memexp"]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_log_wandb_offline_logs_every_plot_and_the_table(
    tmp_path: Path, make_run: RunWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    for seed in (0, 1):
        make_run(
            tmp_path / "sweep" / str(seed),
            seed=seed,
            history=curve_history(2.0 + seed, 1.0),
            final={"test/loss": 1.0 + seed},
        )
    sweep = tmp_path / "sweep"
    assert memexp_main(["report", str(sweep), "--quiet", "--log-wandb"]) == 0
    (run_dir,) = (sweep / "report" / "wandb").glob("offline-run-*")
    logged = sorted(p.name.split("_0_")[0] for p in (run_dir / "files" / "media" / "images").rglob("*.png"))
    written = sorted(p.stem for p in (sweep / "report").rglob("*.png") if "wandb" not in p.parts)
    assert logged == written and len(written) == 5
    (table,) = (run_dir / "files" / "media" / "table").rglob("*.table.json")
    rows = json.loads(table.read_text())["data"]
    assert ["all runs", "test/loss", 2, 1.5] == rows[[r[1] for r in rows].index("test/loss")][:4]
    # a second report keeps the first report's offline run (it may not be synced yet)
    assert memexp_main(["report", str(sweep), "--quiet", "--no-plots"]) == 0
    assert (sweep / "report" / "wandb" / run_dir.name).is_dir()
