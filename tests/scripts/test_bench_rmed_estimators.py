"""scripts/bench_rmed_estimators.py composes and trains its run on the rmed preset (it once broke when
the preset began to measure R_med at set steps while the script turns metrics off)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_rmed_estimators.py"
spec = importlib.util.spec_from_file_location("bench_rmed_estimators", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_trained_run_composes_with_metrics_off_and_trains() -> None:
    run, seconds = bench.trained_run(2, [])
    assert run.cfg.metrics.every == 0 and run.cfg.metrics.r_med_at_steps == []
    assert run.max_steps == 2 and seconds > 0
    assert all(name in dict(run.model.named_parameters()) for name in bench.DEFAULT_TENSORS)
