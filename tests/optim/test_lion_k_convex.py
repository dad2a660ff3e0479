"""Lion-K solves a composite problem (algorithms.md, "Lion-K"; Chen, Liu, Liang & Liu 2023): with
decoupled decay λ > 0 its limit point minimises f(x) + (1/λ)·K*(λx), K* the convex conjugate of the
kernel, per tensor where K is a per-tensor norm. Checked on a small convex problem (a quadratic plus
a quartic, on R⁶ held as a 2×2 and a 2-vector tensor) whose unconstrained minimum lies outside the
constraint set, against independent reference solvers:

| kernel      | composite problem                                  | reference                         |
|-------------|----------------------------------------------------|-----------------------------------|
| `l1` (Lion) | f s.t. ‖x‖∞ ≤ 1/λ                                  | projected gradient descent        |
| `l2`        | f s.t. ‖x_T‖₂ ≤ 1/λ per tensor T                   | scipy SLSQP                       |
| `linf`      | f s.t. ‖x_T‖₁ ≤ 1/λ per tensor T                   | scipy SLSQP on x = u − v, u, v ≥ 0 |
| `softsign`  | f + (δ/λ)·Σ h(λx_i), h(y) = ½[(1+y)ln(1+y) + (1−y)ln(1−y)] | scipy L-BFGS-B (h' = atanh) |
| `quadratic` | f + (λ/2)·‖x‖²                                     | scipy L-BFGS-B                    |

Lion-K runs with a geometrically decaying learning rate (the sign-like kernels oscillate with an
amplitude of order η at a fixed one: 6,000 steps from 1e-2 to 1e-6, 20,000 for ``linf``, which
moves only the argmax coordinates each step and was still 1e-2 away after 6,000). The stated
tolerance is |x − x*|∞ ≤ 2e-3 (the solutions are O(1)).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from memexp.optim.lion_k import LionK
from tests.optim.problems import QuarticProblem

TOLERANCE = 2e-3
PROBLEM = QuarticProblem(seed=0, quartic=0.5)
TENSORS = (slice(0, 4), slice(4, 6))  # the 2x2 matrix and the 2-vector, flattened


def f(x: np.ndarray) -> float:
    return float(PROBLEM.loss(torch.from_numpy(x)))


def grad(x: np.ndarray) -> np.ndarray:
    return PROBLEM.grad(torch.from_numpy(x)).numpy()


def unconstrained_minimum() -> np.ndarray:
    return scipy.optimize.minimize(f, np.zeros(6), jac=grad, method="BFGS", tol=1e-12).x


def lion_k_limit(kernel: str, weight_decay: float, delta: float = 1e-3) -> np.ndarray:
    # linf moves only the argmax coordinate(s) of |c| each step: it needs more steps to settle.
    steps = 20000 if kernel == "linf" else 6000
    params = PROBLEM.parameters(torch.zeros(6, dtype=torch.float64))
    first_lr, last_lr = 1e-2, 1e-6
    optimizer = LionK(params, lr=first_lr, weight_decay=weight_decay, kernel=kernel, delta=delta)
    decay = (last_lr / first_lr) ** (1 / steps)
    for _ in range(steps):
        gradient = PROBLEM.grad(PROBLEM.flat(params))
        params[0].grad, params[1].grad = gradient[:4].reshape(2, 2).clone(), gradient[4:].clone()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] *= decay
    return PROBLEM.flat(params).numpy()


def projected_gradient_descent_on_box(radius: float, steps: int = 20000) -> np.ndarray:
    step = 1 / float(torch.linalg.eigvalsh(PROBLEM.hessian(torch.full((6,), radius, dtype=torch.float64)))[-1])
    x = np.zeros(6)
    for _ in range(steps):
        x = np.clip(x - step * grad(x), -radius, radius)
    return x


def test_lion_limit_point_is_the_projected_gradient_solution_on_the_box() -> None:
    bound = 0.6 * np.abs(unconstrained_minimum()).max()  # the box binds: the minimum lies outside it
    reference = projected_gradient_descent_on_box(bound)
    assert np.isclose(np.abs(reference).max(), bound)  # at least one coordinate on the bound
    x = lion_k_limit("l1", 1 / bound)
    np.testing.assert_allclose(x, reference, atol=TOLERANCE, rtol=0)
    assert np.abs(x).max() <= bound * (1 + 1e-6)


def test_l2_kernel_limit_point_solves_the_per_tensor_ball_problem() -> None:
    radius = 0.6 * np.linalg.norm(unconstrained_minimum()[TENSORS[0]])
    constraints = [{"type": "ineq", "fun": lambda x, t=t: radius**2 - x[t] @ x[t]} for t in TENSORS]
    reference = scipy.optimize.minimize(
        f, np.zeros(6), jac=grad, method="SLSQP", constraints=constraints, options={"ftol": 1e-14, "maxiter": 500}
    ).x
    assert np.isclose(np.linalg.norm(reference[TENSORS[0]]), radius, rtol=1e-6)  # the ball binds
    np.testing.assert_allclose(lion_k_limit("l2", 1 / radius), reference, atol=TOLERANCE, rtol=0)


def test_linf_kernel_limit_point_solves_the_per_tensor_l1_ball_problem() -> None:
    radius = 0.6 * np.abs(unconstrained_minimum()[TENSORS[0]]).sum()

    def split(z: np.ndarray) -> np.ndarray:  # x = u - v with u, v >= 0: |x|_1 <= sum(u + v), smooth
        return z[:6] - z[6:]

    constraints = [{"type": "ineq", "fun": lambda z, t=t: radius - z[:6][t].sum() - z[6:][t].sum()} for t in TENSORS]
    reference = split(
        scipy.optimize.minimize(
            lambda z: f(split(z)),
            np.zeros(12),
            jac=lambda z: np.concatenate([grad(split(z)), -grad(split(z))]),
            method="SLSQP",
            bounds=[(0, None)] * 12,
            constraints=constraints,
            options={"ftol": 1e-14, "maxiter": 1000},
        ).x
    )
    assert np.isclose(np.abs(reference[TENSORS[0]]).sum(), radius, rtol=1e-6)  # the l1 ball binds
    np.testing.assert_allclose(lion_k_limit("linf", 1 / radius), reference, atol=TOLERANCE, rtol=0)


def test_softsign_kernel_limit_point_solves_the_entropic_penalty_problem() -> None:
    # K(c) = Σ δ log cosh(c_i/δ): K*(y) = δ Σ h(y_i), so the penalty is (δ/λ) Σ h(λ x_i), finite
    # inside the box |x_i| < 1/λ only. A large δ makes it differ from the box (l1) solution.
    delta = 0.05
    bound = 0.6 * np.abs(unconstrained_minimum()).max()
    lam = 1 / bound

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        y = lam * x
        penalty = 0.5 * ((1 + y) * np.log1p(y) + (1 - y) * np.log1p(-y)).sum()
        return f(x) + delta / lam * penalty, grad(x) + delta * np.arctanh(y)

    inside = [(-bound * (1 - 1e-12), bound * (1 - 1e-12))] * 6
    reference = scipy.optimize.minimize(
        objective, np.zeros(6), jac=True, method="L-BFGS-B", bounds=inside, options={"ftol": 1e-15, "gtol": 1e-12}
    ).x
    assert np.abs(reference - projected_gradient_descent_on_box(bound)).max() > 10 * TOLERANCE  # not the box's
    np.testing.assert_allclose(lion_k_limit("softsign", lam, delta=delta), reference, atol=TOLERANCE, rtol=0)


def test_quadratic_kernel_limit_point_solves_the_l2_penalty_problem() -> None:
    lam = 1.0
    reference = scipy.optimize.minimize(
        lambda x: (f(x) + lam / 2 * x @ x, grad(x) + lam * x),
        np.zeros(6),
        jac=True,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12},
    ).x
    assert np.abs(reference - unconstrained_minimum()).max() > 0.1  # the penalty matters
    np.testing.assert_allclose(lion_k_limit("quadratic", lam), reference, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("kernel", ["l2", "linf"])
def test_norm_kernels_leave_a_tensor_inside_its_ball_unconstrained_by_the_others(kernel: str) -> None:
    # Per tensor: with a radius that binds the 2x2 tensor only, the 2-vector ends where the KKT
    # conditions put it (its gradient block vanishes), not on its own ball.
    minimum = unconstrained_minimum()
    norm = (lambda v: np.linalg.norm(v)) if kernel == "l2" else (lambda v: np.abs(v).sum())
    radius = 0.6 * norm(minimum[TENSORS[0]])
    assert norm(minimum[TENSORS[1]]) < radius
    x = lion_k_limit(kernel, 1 / radius)
    assert norm(x[TENSORS[1]]) < radius * 0.99
    np.testing.assert_allclose(grad(x)[TENSORS[1]], 0.0, atol=5 * TOLERANCE)
