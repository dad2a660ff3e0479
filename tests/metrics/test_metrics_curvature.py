"""Curvature estimators against closed forms and dense float64 references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from memexp.metrics import curvature
from memexp.metrics.hvp import HessianOperator, ProbeLoss
from tests.metrics.metrics_helpers import (
    Quadratic,
    dense_hessian,
    matrix_with_spectrum,
    mean_output,
    quadratic_batch,
    tiny_data,
    tiny_net,
)

CPU = torch.device("cpu")


def quadratic_operator(matrix: torch.Tensor, backend: str = "autodiff") -> HessianOperator:
    probe = ProbeLoss(Quadratic(matrix), mean_output, [quadratic_batch()])
    return HessianOperator(probe, backend, fd_step=1e-4)


@pytest.mark.parametrize("backend", ["autodiff", "finite_difference"])
def test_lanczos_top_eigenvalue_matches_closed_form_on_a_quadratic(backend: str) -> None:
    # 40 eigenvalues in [-3, 7.5] with the top two close (7.5 vs 7.3): a hard case for power iteration.
    eigenvalues = torch.cat([torch.linspace(-3.0, 6.0, 38, dtype=torch.float64), torch.tensor([7.3, 7.5])])
    operator = quadratic_operator(matrix_with_spectrum(eigenvalues), backend)
    result = curvature.top_eigenvalue(operator.matmat, 40, CPU, torch.float64, max_iterations=40, tolerance=1e-6)
    assert result.converged
    assert abs(result.value - 7.5) / 7.5 < 1e-3
    assert result.iterations <= 40 and operator.matvecs == result.iterations


def test_lanczos_returns_the_largest_algebraic_eigenvalue_not_the_largest_magnitude() -> None:
    matrix = matrix_with_spectrum(torch.tensor([-10.0, -2.0, 0.5, 1.0, 2.5]))
    result = curvature.top_eigenvalue(lambda v: matrix @ v, 5, CPU, torch.float64, max_iterations=5, tolerance=1e-10)
    assert result.value == pytest.approx(2.5, rel=1e-9)


def test_power_iteration_matches_closed_form_with_a_spectral_gap() -> None:
    matrix = matrix_with_spectrum(torch.tensor([0.1, 0.5, 1.0, 2.0, 10.0], dtype=torch.float64), seed=3)
    result = curvature.top_eigenvalue(
        lambda v: matrix @ v, 5, CPU, torch.float64, max_iterations=100, tolerance=1e-8, method="power"
    )
    assert result.converged and result.value == pytest.approx(10.0, rel=1e-3)


def test_eigen_budget_is_respected_and_reported_when_not_converged() -> None:
    eigenvalues = torch.linspace(1.0, 2.0, 50, dtype=torch.float64)  # dense spectrum: slow convergence
    matrix = matrix_with_spectrum(eigenvalues)
    calls = []

    def matmat(v: torch.Tensor) -> torch.Tensor:
        calls.append(v.shape[1])
        return matrix @ v

    result = curvature.top_eigenvalue(matmat, 50, CPU, torch.float64, max_iterations=3, tolerance=1e-12)
    assert not result.converged and result.iterations == 3 and sum(calls) == 3
    assert result.value <= 2.0 + 1e-12  # a Ritz value never exceeds the top eigenvalue


def test_eigen_start_vector_is_fixed_by_the_seed() -> None:
    matrix = matrix_with_spectrum(torch.linspace(1.0, 2.0, 30, dtype=torch.float64))
    run = lambda seed: curvature.top_eigenvalue(lambda v: matrix @ v, 30, CPU, torch.float64, 4, 1e-12, seed)  # noqa: E731
    assert run(0).value == run(0).value
    assert run(0).value != run(1).value


def test_hutchinson_trace_within_its_stated_error() -> None:
    # Rademacher probes: Var(z^T A z) = 2 (|A|_F^2 - sum_i A_ii^2). For 100 probes and this fixed
    # seed the estimate lies within 3 standard deviations of the exact trace (and the reported
    # standard error is within a factor 2 of the true one).
    matrix = matrix_with_spectrum(torch.linspace(-1.0, 4.0, 60, dtype=torch.float64), seed=5)
    operator = quadratic_operator(matrix)
    result = curvature.hutchinson(operator.matmat, 60, CPU, torch.float64, probes=100, seed=0)
    exact = float(matrix.trace())
    sigma = math.sqrt(2 * (float((matrix**2).sum()) - float((matrix.diagonal() ** 2).sum())) / 100)
    assert abs(result.trace - exact) <= 3 * sigma
    assert sigma / 2 < result.trace_std_error < 2 * sigma


def test_hutchinson_probes_do_not_depend_on_the_block_size() -> None:
    matrix = matrix_with_spectrum(torch.linspace(0.0, 1.0, 20, dtype=torch.float64))
    a = curvature.hutchinson(lambda v: matrix @ v, 20, CPU, torch.float64, probes=10, seed=2, block=3)
    b = curvature.hutchinson(lambda v: matrix @ v, 20, CPU, torch.float64, probes=10, seed=2, block=10)
    assert a.trace == pytest.approx(b.trace, rel=1e-12)
    torch.testing.assert_close(a.diagonal, b.diagonal)


def test_hutchinson_is_exact_for_a_diagonal_hessian_and_r_med_matches_it() -> None:
    diagonal = torch.tensor([4.0, -1.0, 0.5, 2.0, 1.0, 8.0, -0.25], dtype=torch.float64)
    operator = quadratic_operator(torch.diag(diagonal))
    result = curvature.hutchinson(operator.matmat, 7, CPU, torch.float64, probes=3, seed=0)
    torch.testing.assert_close(result.diagonal, diagonal)  # z_i^2 = 1 and no off-diagonal terms
    assert result.trace == pytest.approx(float(diagonal.sum()))
    rmed = curvature.r_med(result.diagonal)
    # |H_ii| sorted: 0.25 0.5 1 1 2 4 8 -> median 1, max 8
    assert rmed.value == pytest.approx(8.0)
    assert rmed.negative_fraction == pytest.approx(2 / 7)


def test_r_med_uses_the_mean_of_the_two_middle_values_for_an_even_count() -> None:
    assert curvature.r_med(torch.tensor([1.0, 2.0, 4.0, 10.0])).value == pytest.approx(10.0 / 3.0)
    assert math.isinf(curvature.r_med(torch.tensor([0.0, 0.0, 0.0, 1.0])).value)


def test_exact_diagonal_slice_matches_the_dense_hessian() -> None:
    matrix = matrix_with_spectrum(torch.linspace(-2.0, 3.0, 12, dtype=torch.float64), seed=7)
    operator = quadratic_operator(matrix)
    torch.testing.assert_close(
        curvature.exact_diagonal_slice(operator.matmat, 12, 3, 10, CPU, torch.float64, block=4), matrix.diagonal()[3:10]
    )


@pytest.mark.parametrize("backend", ["autodiff", "finite_difference"])
def test_hvp_on_a_tiny_net_matches_the_dense_float64_hessian(backend: str) -> None:
    model, (x, y) = tiny_net(), tiny_data()
    hessian = dense_hessian(model, F.cross_entropy, x, y)
    operator = HessianOperator(
        ProbeLoss(model, F.cross_entropy, [(x[:7], y[:7]), (x[7:], y[7:])]), backend, fd_step=1e-4
    )
    vectors = torch.randn(hessian.shape[0], 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tolerance = 1e-10 if backend == "autodiff" else 1e-6  # central differences: O(r^2) truncation
    torch.testing.assert_close(operator.matmat(vectors), hessian @ vectors, rtol=tolerance, atol=tolerance)


def test_autodiff_hvp_equals_central_finite_differences_of_the_gradient() -> None:
    model, (x, y) = tiny_net(), tiny_data()
    probe = ProbeLoss(model, F.cross_entropy, [(x, y)])
    v = torch.randn(probe.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    r = 1e-5
    by_hand = (probe.loss_and_gradient(r * v)[1] - probe.loss_and_gradient(-r * v)[1]) / (2 * r)
    torch.testing.assert_close(HessianOperator(probe, "autodiff").matvec(v), by_hand, rtol=1e-7, atol=1e-8)


def test_sharpness_trace_and_preconditioned_sharpness_on_a_tiny_net_match_dense_references() -> None:
    model, (x, y) = tiny_net(), tiny_data()
    hessian = dense_hessian(model, F.cross_entropy, x, y)
    dim = hessian.shape[0]
    operator = HessianOperator(ProbeLoss(model, F.cross_entropy, [(x, y)]), "autodiff")
    top = curvature.top_eigenvalue(operator.matmat, dim, CPU, torch.float64, max_iterations=dim, tolerance=1e-9)
    assert top.value == pytest.approx(float(torch.linalg.eigvalsh(hessian)[-1]), rel=1e-6)
    root = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)
    pre = curvature.top_eigenvalue(
        lambda v: root[:, None] * operator.matmat(root[:, None] * v),
        dim,
        CPU,
        torch.float64,
        max_iterations=dim,
        tolerance=1e-9,
    )
    reference = torch.linalg.eigvalsh(root[:, None] * hessian * root[None, :])[-1]
    assert pre.value == pytest.approx(float(reference), rel=1e-6)
    hutch = curvature.hutchinson(operator.matmat, dim, CPU, torch.float64, probes=200, seed=0)
    assert abs(hutch.trace - float(hessian.trace())) <= 3 * hutch.trace_std_error


class SeparableQuadratic(torch.nn.Module):
    """L = 1/2 sum_i d_i a_i^2 + 1/2 sum_ij e_ij W_ij^2: a diagonal Hessian with known entries per tensor."""

    def __init__(self, d: torch.Tensor, e: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("d", d)
        self.register_buffer("e", e)
        self.a = torch.nn.Parameter(torch.ones_like(d))
        self.w = torch.nn.Parameter(torch.full_like(e, 0.5))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        value = 0.5 * (self.d * self.a**2).sum() + 0.5 * (self.e * self.w**2).sum()
        return value.expand(inputs.shape[0])


def test_r_med_per_tensor_exact_and_hutchinson_paths_and_the_weight_tensor_median() -> None:
    from memexp.config import MetricsConfig, MetricsTier
    from memexp.metrics import compute_metrics

    d = torch.tensor([1.0, -3.0, 2.0, 0.5, 4.0], dtype=torch.float64)  # |.| sorted 0.5 1 2 3 4: R = 4/2
    e = torch.arange(1.0, 41.0, dtype=torch.float64).reshape(5, 8)  # 1..40: R = 40 / 20.5
    model = SeparableQuadratic(d, e)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = MetricsConfig(
        every=1,
        tier=MetricsTier.economy,
        include=["r_med"],
        hutchinson_probes=6,
        exact_diag_max_numel=5,
        exact_diag_budget=64,
    )
    out = compute_metrics(model, mean_output, quadratic_batch(), optimizer, cfg)
    assert out["geom/r_med/a"] == pytest.approx(2.0)  # exact diagonal (5 entries)
    assert out["geom/r_med_neg_frac/a"] == pytest.approx(1 / 5)
    assert out["geom/r_med/w"] == pytest.approx(40 / 20.5)  # Hutchinson, exact for a diagonal Hessian
    assert out["geom/r_med"] == pytest.approx(40 / 20.5)  # the median over weight tensors (ndim >= 2) only
    assert out["geom/r_med_diag_error"] == pytest.approx(0.0, abs=1e-12)
    assert out["geom/hvp_count"] == 6 + 5  # the probes plus one product per exact diagonal entry
    over_budget = compute_metrics(
        model,
        mean_output,
        quadratic_batch(),
        optimizer,
        MetricsConfig(every=1, include=["r_med"], hutchinson_probes=6, exact_diag_max_numel=5, exact_diag_budget=4),
    )
    assert over_budget["geom/hvp_count"] == 6 and "geom/r_med_diag_error" not in over_budget
