"""Every experiment preset is exercised: its sweep expands to the intended jobs, and one job of it
runs end to end at size=tiny. A new preset fails `test_every_preset_is_covered` until it is added
to PRESETS here (the mila ResearchTemplate rule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memexp.logging import read_metrics
from memexp.train import config_dir
from tests.conftest import run_memexp

# preset -> (number of jobs in its sweep, one job's overrides, metrics that job must log)
PRESETS: dict[str, tuple[int, list[str], set[str]]] = {
    "lion_vs_adamw": (9, ["optimizer=lion"], {"geom/correction", "geom/grad_l1", "gap/acc"}),
    "memory_vs_memoryless": (18, ["optimizer=adamw_memoryless"], {"geom/correction", "gap/loss"}),
    "rmed_adam_vs_sgd": (
        6,
        ["optimizer=adamw", "metrics.r_med_at_steps=[20]", "metrics.r_med_tensors=[ln_f.weight]"],
        {"geom/r_med", "gap/loss", "gap/ppl_ratio"},
    ),
    "rmed_deep_linear": (
        6,
        ["optimizer=sgd"],
        {"geom/r_med/layers.0.weight", "geom/r_med/layers.1.weight", "gap/loss"},
    ),
    "rmed_cnn": (
        6,
        ["optimizer=adamw", "metrics.r_med_at_steps=[10,20]"],
        {"geom/r_med/features.0.weight", "geom/r_med/features.3.weight", "geom/r_med/head.3.weight", "gap/acc"},
    ),
    "adaptive_memory": (33, ["optimizer=am_sgd"], {"geom/am_beta", "optim/beta_mean", "gap/acc"}),
    "lion_k_kernels": (6, ["optimizer.kernel=softsign"], {"geom/lion_linf_lambda", "geom/lion_saturation", "gap/acc"}),
    "twin_distance": (
        12,
        ["optimizer=adamw_beta2_0.99", "optimizer.lr=1e-3"],
        {"twin/distance", "twin/distance_uncorrected", "twin/rel_distance", "twin/loss_diff", "gap/loss"},
    ),
    "adamw_beta2": (12, ["optimizer.beta2=0.95"], {"geom/correction", "geom/grad_l1", "gap/loss"}),
    "lion_box": (9, ["optimizer=lion_k_softsign"], {"geom/lion_linf_lambda", "geom/lion_saturation", "gap/loss"}),
}


def test_every_preset_is_covered() -> None:
    assert {p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml")} == set(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_sweep_expands_and_one_tiny_job_runs(tmp_path: Path, preset: str) -> None:
    jobs, overrides, logged = PRESETS[preset]
    plan = run_memexp("plan", f"experiment={preset}", "size=tiny", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert f"memexp plan: {jobs} jobs" in plan.stdout

    run_dir = tmp_path / "run"
    result = run_memexp(
        "train",
        f"experiment={preset}",
        "size=tiny",
        *overrides,
        "trainer.max_steps=20",
        "trainer.eval_every=10",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished", summary
    keys = set().union(*read_metrics(run_dir / "metrics.jsonl"))
    assert logged <= keys, logged - keys
