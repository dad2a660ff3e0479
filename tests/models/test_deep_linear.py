"""The deep linear network: a product of weight matrices, and its exact R_med against the closed-form
Hessian diagonal of the squared error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memexp.config import MetricsConfig, MetricsTier, RMedMethod
from memexp.data.base import DataSpec
from memexp.metrics import compute_metrics, curvature
from memexp.models.deep_linear import DeepLinearConfig, build_deep_linear

SPEC = DataSpec(name="synthetic_regression", task="regression", input_shape=(5,), num_classes=3)


def test_output_is_the_product_of_the_weights_without_bias_or_activation() -> None:
    torch.manual_seed(0)
    model = build_deep_linear(DeepLinearConfig(depth=3, width=4), SPEC)
    w1, w2, w3 = (layer.weight for layer in model.layers)
    assert [w.shape for w in (w1, w2, w3)] == [(4, 5), (4, 4), (3, 4)]
    assert sum(p.numel() for p in model.parameters()) == 20 + 16 + 12  # no biases
    x = torch.randn(7, 5)
    torch.testing.assert_close(model(x), x @ (w3 @ w2 @ w1).T)
    assert build_deep_linear(DeepLinearConfig(), SPEC).layers[0].weight.shape == (64, 5)  # depth 2, width 64


def test_exact_r_med_matches_the_closed_form_hessian_diagonal() -> None:
    # L = mean over n, k of ((W2 W1 x_n)_k - y_nk)^2. The model is linear in each matrix, so the
    # diagonal of the Hessian is the Gauss-Newton one:
    #   d2L/dW1_ab^2 = 2/(N K) (W2^T W2)_aa sum_n x_nb^2,   d2L/dW2_ka^2 = 2/(N K) sum_n (W1 x_n)_a^2.
    torch.manual_seed(1)
    model = build_deep_linear(DeepLinearConfig(depth=2, width=6), SPEC).double()
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    w1, w2 = (layer.weight.detach() for layer in model.layers)
    scale = 2 / (32 * 3)
    first = scale * torch.outer((w2.T @ w2).diagonal(), (x**2).sum(0))
    second = scale * ((x @ w1.T) ** 2).sum(0).expand(3, 6)
    cfg = MetricsConfig(
        every=1, tier=MetricsTier.economy, include=["r_med"], r_med_method=RMedMethod.exact, exact_diag_max_numel=0
    )
    out = compute_metrics(model, F.mse_loss, (x, y), torch.optim.SGD(model.parameters(), lr=0.1), cfg)
    assert out["geom/r_med/layers.0.weight"] == pytest.approx(curvature.r_med(first).value, rel=1e-9)
    assert out["geom/r_med/layers.1.weight"] == pytest.approx(curvature.r_med(second).value, rel=1e-9)
    assert out["geom/r_med_neg_frac/layers.0.weight"] == 0.0  # a Gauss-Newton diagonal is >= 0


def test_regression_run_end_to_end_with_full_metrics_and_a_report(tmp_path) -> None:  # noqa: ANN001
    import json

    from memexp import cli

    run_dir = tmp_path / "deep_linear"
    code = cli.main(
        [
            "train",
            "model=deep_linear",
            "model.width=8",
            "data=synthetic_regression",
            "data.dim=6",
            "metrics=full",
            "metrics.r_med_method=exact",
            "metrics.r_med_at_steps=[3]",
            "logger=none",
            "trainer=quick",
            "trainer.max_steps=6",
            "trainer.eval_every=3",
            "trainer.progress=off",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert not [key for key in summary if key.endswith("/acc")]  # a regression task has no accuracy
    assert {"train/loss", "val/loss", "test/loss"} <= set(summary)  # three splits, like every dataset
    # gap = held-out minus train (held-out: val today, test under the train/val/test split contract)
    held_out = [summary[f"{split}/loss"] - summary["train/loss"] for split in ("val", "test")]
    assert any(summary["gap/loss"] == pytest.approx(value) for value in held_out)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    r_med_steps = [row["step"] for row in rows if "geom/r_med" in row]
    assert r_med_steps == [3]  # only at the chosen step
    (row,) = [row for row in rows if "geom/r_med" in row]
    assert row["geom/r_med_hvp_count"] == 6 * 8 + 8 * 4  # exact: one product per parameter
    assert cli.main(["report", str(run_dir), "--quiet"]) == 0
    report = (run_dir / "report" / "report.md").read_text()
    assert "gap/loss" in report and "acc" not in report
