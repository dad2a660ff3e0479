"""Projected Adam: hand-computed steps, plain Adam without a box, the box invariant, the constrained
optimum on a convex problem (two independent references), and the one-line errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.optimize
import torch

from memexp.errors import ConfigValueError
from memexp.optim import OPTIMIZERS, ProjectedAdam
from memexp.optim.base import OptimizerArgumentError
from memexp.optim.param_groups import param_groups_weight_decay
from memexp.optim.projected_adam import ProjectedAdamConfig
from tests.optim.problems import QuarticProblem, mlp_closure, small_mlp

# Two steps by hand, lr 0.1, betas (0.9, 0.99), box λ = 4 (radius 0.25), eps 1e-8 (its effect is
# below 1e-8 here), gradients g1 = (-1, 2, 0.5), g2 = (0.5, 2, -0.5), from x0 = (0.2, -0.1, 0):
#   step 1: m̂ = g1, v̂ = g1², so the step is 0.1·sign(g1): x = (0.3, -0.2, -0.1), clipped (0.25, -0.2, -0.1)
#   step 2: m = 0.09·g1 + 0.1·g2 = (-0.04, 0.38, -0.005), m̂ = m/0.19 = (-0.2105263, 2, -0.0263158)
#           v = 0.0099·g1² + 0.01·g2² = (0.0124, 0.0796, 0.004975), v̂ = v/0.0199 = (0.6231156, 4, 0.25)
#           step = 0.1·m̂/√v̂ = (-0.0266699, 0.1, -0.0052632)
#           x = (0.2766699, -0.3, -0.0947368), clipped (0.25, -0.25, -0.0947368)
START = [0.2, -0.1, 0.0]
GRADIENTS = ([-1.0, 2.0, 0.5], [0.5, 2.0, -0.5])
BOXED = ([0.25, -0.2, -0.1], [0.25, -0.25, -0.0947368])
UNBOXED = ([0.3, -0.2, -0.1], [0.3266699, -0.3, -0.0947368])


@pytest.mark.parametrize("foreach", [True, False])
def test_two_steps_by_hand_with_and_without_the_box(foreach: bool) -> None:
    boxed = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    free = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    groups = [{"params": [boxed], "weight_decay": 4.0}, {"params": [free], "weight_decay": 0.0}]
    optimizer = ProjectedAdam(groups, lr=0.1, betas=(0.9, 0.99), foreach=foreach)
    for gradient, want_boxed, want_free in zip(GRADIENTS, BOXED, UNBOXED):
        boxed.grad = torch.tensor(gradient, dtype=torch.float64)
        free.grad = torch.tensor(gradient, dtype=torch.float64)
        optimizer.step()
        np.testing.assert_allclose(boxed.detach().numpy(), want_boxed, atol=1e-7, rtol=0)
        np.testing.assert_allclose(free.detach().numpy(), want_free, atol=1e-7, rtol=0)
    assert optimizer.last_stats["constraint_max"] == pytest.approx(1.0)  # |x|·λ = 0.25·4 on two coordinates
    assert optimizer.last_stats["constraint_saturated_fraction"] == pytest.approx(2 / 3)
    # The box is not a decay: nothing reading the groups may see a weight decay.
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.0]
    assert [g["box_lambda"] for g in optimizer.param_groups] == [4.0, 0.0]


@pytest.mark.parametrize("foreach", [True, False])
def test_without_a_box_it_is_torch_adam(foreach: bool) -> None:
    problem = QuarticProblem(seed=3)
    ours, reference = problem.parameters(), problem.parameters()
    optimizer = ProjectedAdam(ours, lr=0.05, betas=(0.8, 0.95), eps=1e-6, foreach=foreach)
    adam = torch.optim.Adam(reference, lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    for _ in range(25):
        optimizer.step(problem.closure(ours))
        adam.step(problem.closure(reference))
    torch.testing.assert_close(problem.flat(ours), problem.flat(reference), rtol=1e-12, atol=1e-12)


def test_box_holds_after_every_step_for_decayed_weights_only() -> None:
    model = small_mlp(seed=1)
    box_lambda = 2.0
    groups = param_groups_weight_decay(model, box_lambda, ["bias"])
    optimizer = ProjectedAdam(groups, lr=0.05)
    closure = mlp_closure(model, seed=1)
    weights = [p for p in groups[0]["params"]]
    biases = [p for p in groups[1]["params"]]
    largest_bias = 0.0
    for _ in range(60):
        optimizer.step(closure)
        assert max(float(w.detach().abs().max()) for w in weights) * box_lambda <= 1.0
        assert optimizer.last_stats["constraint_max"] <= 1.0
        largest_bias = max(largest_bias, max(float(b.detach().abs().max()) for b in biases))
    # The box binds (some weight sits on it) and the biases, which have no box, leave it.
    assert optimizer.last_stats["constraint_max"] == pytest.approx(1.0)
    assert largest_bias * box_lambda > 1.0


def projected_adam_limit(radius: float, problem: QuarticProblem, steps: int = 6000) -> np.ndarray:
    """Projected Adam with a geometrically decaying lr (1e-2 -> 1e-6), as the Lion-K convex tests run Lion."""
    params = problem.parameters(torch.zeros(problem.dim, dtype=torch.float64))
    first_lr, last_lr = 1e-2, 1e-6
    optimizer = ProjectedAdam(params, lr=first_lr, weight_decay=1 / radius)
    decay = (last_lr / first_lr) ** (1 / steps)
    for _ in range(steps):
        optimizer.step(problem.closure(params))
        for group in optimizer.param_groups:
            group["lr"] *= decay
    return problem.flat(params).numpy()


def test_limit_point_is_the_box_constrained_minimum() -> None:
    problem = QuarticProblem(seed=0, quartic=0.5)

    def f(x: np.ndarray) -> float:
        return float(problem.loss(torch.from_numpy(x)))

    def grad(x: np.ndarray) -> np.ndarray:
        return problem.grad(torch.from_numpy(x)).numpy()

    unconstrained = scipy.optimize.minimize(f, np.zeros(6), jac=grad, method="BFGS", tol=1e-12).x
    radius = 0.6 * np.abs(unconstrained).max()  # the unconstrained minimum lies outside the box
    # Reference 1: projected gradient descent with step 1/L (L bounds the Hessian on the box).
    step = 1 / float(torch.linalg.eigvalsh(problem.hessian(torch.full((6,), radius, dtype=torch.float64)))[-1])
    pgd = np.zeros(6)
    for _ in range(20000):
        pgd = np.clip(pgd - step * grad(pgd), -radius, radius)
    # Reference 2: L-BFGS-B, a quasi-Newton method with the bounds built in.
    bounded = scipy.optimize.minimize(
        f,
        np.zeros(6),
        jac=grad,
        method="L-BFGS-B",
        bounds=[(-radius, radius)] * 6,
        options={"ftol": 1e-15, "gtol": 1e-12},
    ).x
    np.testing.assert_allclose(pgd, bounded, atol=1e-6, rtol=0)
    assert np.isclose(np.abs(bounded).max(), radius)  # the box binds

    x = projected_adam_limit(radius, problem)
    np.testing.assert_allclose(x, bounded, atol=2e-3, rtol=0)
    assert np.abs(x).max() <= radius


def test_bad_arguments_name_the_argument_and_the_config_key() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    bad = (({"weight_decay": -1.0}, "weight_decay"), ({"eps": 0.0}, "eps"), ({"betas": (0.9, 1.0)}, "betas[1]"))
    for kwargs, key in bad:
        with pytest.raises(OptimizerArgumentError, match=key.replace("[", r"\[")):
            ProjectedAdam(params, **kwargs)
    with pytest.raises(OptimizerArgumentError, match="weight_decay"):
        ProjectedAdam([{"params": params, "weight_decay": -0.5}])
    bad_configs = ((ProjectedAdamConfig(beta2=1.0), "beta2"), (ProjectedAdamConfig(weight_decay=-2.0), "weight_decay"))
    for config, key in bad_configs:
        with pytest.raises(ConfigValueError) as raised:
            config.check()
        assert raised.value.key == key and "\n" not in str(raised.value)


def test_state_dict_round_trip_continues_the_same_trajectory() -> None:
    problem = QuarticProblem(seed=2)
    params = problem.parameters()
    groups = [{"params": params, "weight_decay": 1.5}]
    optimizer = OPTIMIZERS.build("projected_adam", groups, ProjectedAdamConfig(lr=0.05))
    for _ in range(5):
        optimizer.step(problem.closure(params))
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(optimizer.state_dict())  # state_dict() shares the live buffers
    for _ in range(5):
        optimizer.step(problem.closure(params))
    expected = problem.flat(params)

    resumed_params = [torch.nn.Parameter(p.clone()) for p in saved_params]
    resumed = ProjectedAdam([{"params": resumed_params, "weight_decay": 0.0}], lr=0.05)
    resumed.load_state_dict(saved_state)
    assert resumed.param_groups[0]["box_lambda"] == 1.5
    for _ in range(5):
        resumed.step(problem.closure(resumed_params))
    torch.testing.assert_close(problem.flat(resumed_params), expected, rtol=0, atol=0)
