"""Hessian-vector backends: autodiff where the model supports it, finite differences otherwise, and the
determinism probe that refuses a stochastic probe loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memexp.config import HvpBackend, MetricsConfig, MetricsTier
from memexp.metrics import ProbeState, compute_metrics
from memexp.metrics.block_hvp import HessianOperator, NonDeterministicModelError, ProbeLoss, choose_backend


class CubeWithoutForwardAD(torch.autograd.Function):
    """x^3 with a hand-written backward and no forward-mode rule: torch.func cannot transform it, so
    curvlinops' HVP fails on a model using it (like a fused kernel without double backward)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


class CubicModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return CubeWithoutForwardAD.apply(self.w).sum().expand(x.shape[0])


class NoisyModel(nn.Module):
    """Stochastic even in eval mode: every curvature estimate on it would be noise."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x + 0.1 * torch.randn_like(x))


def batch() -> tuple[Tensor, Tensor]:
    return torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2)


def test_auto_falls_back_to_finite_differences_and_those_are_right() -> None:
    probe = ProbeLoss(CubicModel(), lambda out, y: out.mean(), [batch()])
    with pytest.warns(UserWarning, match="finite differences"):
        assert choose_backend(probe, "auto", 1e-4) == "finite_difference"
    operator = HessianOperator(probe, "finite_difference", fd_step=1e-4)
    # L = sum w^3: H = diag(6 w)
    torch.testing.assert_close(
        operator.matmat(torch.eye(3, dtype=torch.float64)),
        torch.diag(6 * probe.params[0].detach()),
        rtol=1e-6,
        atol=1e-7,
    )


def test_metrics_on_a_model_without_forward_ad_use_finite_differences() -> None:
    model = CubicModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = ProbeState()
    cfg = MetricsConfig(every=1, tier=MetricsTier.business, sharpness_iters=3, sharpness_tol=1e-8, fd_step=1e-4)
    with pytest.warns(UserWarning, match="finite differences"):
        out = compute_metrics(model, lambda out, y: out.mean(), batch(), optimizer, cfg, step=1, state=state)
    assert state.backend == "finite_difference"
    assert out["geom/sharpness"] == pytest.approx(12.0, rel=1e-6)  # 6 * max(w) = 6 * 2
    assert out["geom/hessian_trace"] == pytest.approx(6 * 1.5, rel=1e-6)  # Hutchinson is exact for diagonal H


@pytest.mark.parametrize("backend", [HvpBackend.autodiff, HvpBackend.finite_difference])
def test_determinism_probe_refuses_a_stochastic_model(backend: HvpBackend) -> None:
    torch.manual_seed(0)
    model = NoisyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = MetricsConfig(every=1, tier=MetricsTier.business, hvp=backend, sharpness_iters=2, hutchinson_probes=2)
    with pytest.raises(NonDeterministicModelError, match="not deterministic"):
        compute_metrics(model, F.cross_entropy, (torch.randn(8, 3), torch.randint(0, 2, (8,))), optimizer, cfg)


def test_determinism_probe_accepts_dropout_because_probes_run_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = MetricsConfig(every=1, tier=MetricsTier.business, sharpness_iters=2, hutchinson_probes=2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    first = compute_metrics(model, F.cross_entropy, (x, y), optimizer, cfg)
    second = compute_metrics(model, F.cross_entropy, (x, y), optimizer, cfg)
    assert first["geom/sharpness"] == second["geom/sharpness"]  # fixed probes and start vector
    assert first["geom/hessian_trace"] == second["geom/hessian_trace"]


def test_finite_difference_operator_runs_its_own_determinism_probe() -> None:
    probe = ProbeLoss(NoisyModel(), F.cross_entropy, [(torch.randn(8, 3), torch.randint(0, 2, (8,)))])
    with pytest.raises(NonDeterministicModelError):
        HessianOperator(probe, "finite_difference", check_deterministic=True)
