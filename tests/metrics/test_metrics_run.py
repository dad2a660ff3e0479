"""The metrics in the training loop: config, schedule, every key in metrics.jsonl and in the W&B
offline transaction log, and no effect on the training trajectory."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from memexp.config import METRIC_NAMES, MetricsConfig, MetricsTier, TrackSchedule, register_configs
from memexp.errors import ConfigValueError
from memexp.logging import LocalLogger, read_metrics
from memexp.metrics import MetricsSchedule
from memexp.train import build_run, check_config, config_dir, train
from tests.metrics.metrics_helpers import wandb_logged_keys

# The tiny runs use 4 Hutchinson probes to stay fast; the warning that R_med wants >= 100 is expected.
pytestmark = pytest.mark.filterwarnings("ignore:metrics.hutchinson_probes=4:UserWarning")

ISSUE_KEYS = {  # the names issue 5 lists (am_beta needs an adaptive-memory optimizer: see the unit test)
    "geom/grad_l2sq",
    "geom/grad_l1",
    "geom/correction",
    "geom/correction_sign",
    "geom/r_med",
    "geom/sharpness",
    "geom/sharpness_precond",
    "geom/hessian_trace",
    "geom/lion_saturation",
    "geom/lion_linf_lambda",
    "geom/weight_norm",
    "geom/update_ratio",
}
TINY = [
    "trainer=quick",
    "trainer.max_steps=4",
    "trainer.eval_every=2",
    "trainer.log_every=2",
    "trainer.progress=off",
    "model.hidden_sizes=[8]",
    "trainer.eval_examples=64",
]
FULL = [
    "metrics=full",
    "metrics.probe_size=32",
    "metrics.hutchinson_probes=4",
    "metrics.sharpness_iters=3",
    "metrics.exact_diag_max_numel=10",
]


def composed(overrides: list[str]):  # noqa: ANN201
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return check_config(compose("train", overrides=["logger=none", *TINY, *overrides]))


def test_metrics_schedules_by_hand() -> None:
    linear = MetricsSchedule(every=3, max_steps=10)
    assert [s for s in range(1, 11) if linear.due(s)] == [3, 6, 9, 10]
    log = MetricsSchedule(every=50, max_steps=200, schedule=TrackSchedule.log, per_decade=10)
    assert [s for s in range(1, 201) if log.due(s)] == [
        1,
        2,
        3,
        4,
        5,
        6,
        8,
        10,
        13,
        16,
        20,
        25,
        32,
        40,
        50,
        63,
        79,
        100,
        126,
        150,
        158,
        200,
    ]
    assert not any(MetricsSchedule(every=0, max_steps=10).due(s) for s in range(1, 11))


def test_tiers_are_nested_and_include_exclude_apply() -> None:
    economy, business, full = (MetricsConfig(tier=tier).metrics() for tier in MetricsTier)
    assert set(economy) < set(business) < set(full) == set(METRIC_NAMES)
    assert "sharpness" not in economy
    chosen = MetricsConfig(include=["sharpness"], exclude=["update_ratio"]).metrics()
    assert "sharpness" in chosen and "update_ratio" not in chosen


def test_default_metrics_follow_the_eval_cadence() -> None:
    cfg = composed(["metrics=default", "trainer.eval_every=7"])
    assert cfg.metrics.every == 7 and cfg.metrics.tier.value == "economy"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("metrics.include=[sharpnes]", "metrics.include"),
        ("metrics.hutchinson_probes=1", "metrics.hutchinson_probes"),
        ("metrics.every=-1", "metrics.every"),
    ],
)
def test_bad_metrics_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigValueError) as error:
        composed([override])
    assert str(error.value).startswith(f"{key}=")


def test_full_metrics_run_logs_every_key_to_jsonl_and_wandb(tmp_path: Path) -> None:
    from memexp.config import WandbConfig
    from memexp.logging.wandb_logger import WandbLogger

    cfg = composed([*FULL, "optimizer=adamw"])
    run = build_run(cfg)
    wandb_logger = WandbLogger(WandbConfig(mode="offline"), tmp_path, {"test": True}, "metrics-test", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(run, tmp_path, [LocalLogger(tmp_path), wandb_logger])
    dropped = [str(w.message) for w in caught if "failed and is disabled" in str(w.message)]
    assert not dropped, dropped  # a W&B error would silently disable the backend
    events = read_metrics(tmp_path / "metrics.jsonl")
    geom_steps = [event["step"] for event in events if "geom/grad_l2sq" in event]
    assert geom_steps == [2, 4]
    logged = set().union(*(event.keys() for event in events))
    names = [name for name, _ in run.model.named_parameters()]
    per_layer = {f"geom/r_med/{name}" for name in names} | {f"geom/update_ratio/{name}" for name in names}
    assert ISSUE_KEYS | per_layer <= logged
    assert ISSUE_KEYS <= set(summary)
    history, wandb_summary = wandb_logged_keys(tmp_path)
    assert ISSUE_KEYS | per_layer <= history
    assert ISSUE_KEYS <= wandb_summary


def losses(events: list[dict]) -> list[float]:
    return [event["train/batch_loss"] for event in events if "train/batch_loss" in event]


def test_metrics_do_not_change_the_training_trajectory(tmp_path: Path) -> None:
    # Dropout draws from the global generator: a metrics pass that consumed random numbers, left the
    # model in eval mode or touched .grad would change the losses that follow it.
    trajectories = []
    for name, metrics in (("none", ["metrics=none"]), ("full", FULL)):
        cfg = composed([*metrics, "model.dropout=0.3", "optimizer=sgd", "trainer.log_every=1"])
        run = build_run(cfg)
        train(run, tmp_path / name, [LocalLogger(_mkdir(tmp_path / name))])
        trajectories.append(losses(read_metrics(tmp_path / name / "metrics.jsonl")))
        trajectories.append([p.detach().clone() for p in run.model.parameters()])
    assert trajectories[0] == trajectories[2]
    assert all(torch.equal(a, b) for a, b in zip(trajectories[1], trajectories[3]))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
