"""`memexp train -m` then `memexp report` on what it wrote: the report reads the real layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from memexp.cli import main as memexp_main
from tests.conftest import run_memexp


def test_report_on_a_real_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_memexp(
        "train",
        "-m",
        "optimizer=sgd,adamw",
        "seed=0,1",
        "trainer=quick",
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "trainer.log_every=2",
        "trainer.progress=off",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # Simulate a job killed mid-run: its summary still says "running".
    summary_path = sweep / "3" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "status": "running", "step": 2}))

    assert memexp_main(["report", str(sweep), "--quiet"]) == 0
    out = sweep / "report"
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["group"] for r in rows} == {"optimizer=adamw", "optimizer=sgd"}
    val = {r["group"]: r for r in rows if r["metric"] == "test/loss"}
    assert (val["optimizer=sgd"]["n"], val["optimizer=adamw"]["n"], val["optimizer=adamw"]["incomplete"]) == (
        "2",
        "1",
        "1",
    )
    # the sgd mean is the mean of the two runs' summaries
    finals = [json.loads((sweep / str(i) / "summary.json").read_text())["test/loss"] for i in (0, 1)]
    assert float(val["optimizer=sgd"]["mean"]) == sum(finals) / 2
    assert (out / "loss_curves.png").is_file() and (out / "gap.png").is_file()
