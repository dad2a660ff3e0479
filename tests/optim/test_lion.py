"""Lion and Lion-K: hand-written updates, kernel l1 == Lion bit for bit, the implied constraints."""

from __future__ import annotations

import pytest
import torch

from memexp.optim import Lion, LionK
from tests.optim.problems import QuarticProblem, mlp_closure, small_mlp


def kernel_gradient(kernel: str, c: torch.Tensor, delta: float) -> torch.Tensor:
    """∇K(c) for one tensor, written from the spec's table."""
    if kernel == "l1":
        return torch.sign(c)
    if kernel == "l2":
        norm = torch.sqrt((c**2).sum())
        return c / norm if norm > 0 else torch.zeros_like(c)
    if kernel == "linf":
        out = torch.zeros_like(c)
        largest = c.abs().max()
        if largest > 0:
            ties = c.abs() == largest
            out[ties] = torch.sign(c[ties]) / ties.sum()
        return out
    if kernel == "softsign":
        return torch.tanh(c / delta)
    assert kernel == "quadratic"
    return c.clone()


def hand_lion_k(problem: QuarticProblem, kernel: str, lr: float, b1: float, b2: float, wd: float, delta: float):
    """Three steps with the parameter split into its two tensors (per-tensor kernels need them)."""
    x = [problem.start[:4].clone(), problem.start[4:].clone()]
    m = [torch.zeros(4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    out = []
    for _ in range(3):
        g_flat = problem.grad(torch.cat(x))
        g = [g_flat[:4], g_flat[4:]]
        for i in range(2):
            c = b1 * m[i] + (1 - b1) * g[i]
            x[i] = x[i] - lr * (kernel_gradient(kernel, c, delta) + wd * x[i])
            m[i] = b2 * m[i] + (1 - b2) * g[i]
        out.append(torch.cat(x))
    return out


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kernel", ["l1", "l2", "linf", "softsign", "quadratic"])
def test_first_three_steps_by_hand(kernel: str, foreach: bool) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    optimizer = LionK(params, lr=0.03, betas=(0.8, 0.95), weight_decay=0.2, kernel=kernel, delta=0.7, foreach=foreach)
    closure = problem.closure(params)
    expected = hand_lion_k(problem, kernel, 0.03, 0.8, 0.95, 0.2, 0.7)
    for step in range(3):
        optimizer.step(closure)
        torch.testing.assert_close(problem.flat(params), expected[step], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_lion_first_three_steps_by_hand(foreach: bool) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    optimizer = Lion(params, lr=0.03, betas=(0.8, 0.95), weight_decay=0.2, foreach=foreach)
    closure = problem.closure(params)
    expected = hand_lion_k(problem, "l1", 0.03, 0.8, 0.95, 0.2, 1.0)
    for step in range(3):
        optimizer.step(closure)
        torch.testing.assert_close(problem.flat(params), expected[step], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lion_k_l1_is_lion_bit_for_bit(foreach: bool, dtype: torch.dtype) -> None:
    models = [small_mlp(seed=0, dtype=dtype), small_mlp(seed=0, dtype=dtype)]
    groups = [
        [
            {"params": [p for n, p in m.named_parameters() if "weight" in n], "weight_decay": 0.5},
            {"params": [p for n, p in m.named_parameters() if "bias" in n], "weight_decay": 0.0},
        ]
        for m in models
    ]
    lion = Lion(groups[0], lr=1e-2, betas=(0.9, 0.99), foreach=foreach)
    lion_k = LionK(groups[1], lr=1e-2, betas=(0.9, 0.99), kernel="l1", foreach=foreach)
    closures = [mlp_closure(m) for m in models]
    for _ in range(30):
        lion.step(closures[0])
        lion_k.step(closures[1])
        for c in closures:
            c.advance()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    assert lion.last_stats == lion_k.last_stats


def far_minimum_problem(dim: int = 50) -> tuple[torch.nn.Parameter, callable]:
    """L(x) = ½‖x − x*‖² with x* far outside every constraint set used below."""
    target = torch.linspace(-20.0, 20.0, dim, dtype=torch.float64)
    x = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def closure() -> torch.Tensor:
        x.grad = None
        loss = 0.5 * ((x - target) ** 2).sum()
        loss.backward()
        return loss

    return x, closure


@pytest.mark.parametrize(
    ("kernel", "norm"),
    [
        ("l1", lambda x: x.abs().max()),
        ("softsign", lambda x: x.abs().max()),
        ("l2", lambda x: torch.linalg.vector_norm(x)),
        ("linf", lambda x: x.abs().sum()),
    ],
)
def test_weight_decay_enforces_the_kernel_constraint(kernel: str, norm) -> None:
    """With λ the dynamics solve min L s.t. the dual-norm ball of radius 1/λ; the unconstrained
    minimum (‖x*‖∞ = 20) lies outside, so the bound is active and must hold at the end."""
    wd = 0.5  # radius 2
    x, closure = far_minimum_problem()
    optimizer = LionK([x], lr=0.01, betas=(0.9, 0.99), weight_decay=wd, kernel=kernel, delta=0.05)
    for _ in range(3000):
        optimizer.step(closure)
    final = norm(x.detach()).item()
    assert final <= (1 / wd) * (1 + 1e-3)
    assert final >= (1 / wd) * 0.9  # and it is active: the iterate sits at the bound, not inside
    assert optimizer.last_stats["constraint_max"] == pytest.approx(final * wd, rel=1e-12)


def test_lion_box_constraint_and_saturation_stats() -> None:
    wd = 0.25
    x, closure = far_minimum_problem()
    optimizer = Lion([x], lr=0.02, weight_decay=wd)
    optimizer.step(closure)
    assert optimizer.last_stats["update_rms"] == 1.0  # c = (1−β1)·g has no zero entry: |sign| = 1 everywhere
    for _ in range(2000):
        optimizer.step(closure)
    assert x.detach().abs().max().item() <= (1 / wd) * (1 + 1e-3)
    stats = optimizer.last_stats
    # every target with |x*_i| > 4 (most of linspace(-20, 20)) ends at the bound
    expected_fraction = (torch.linspace(-20.0, 20.0, 50).abs() > 4.0).double().mean().item()
    assert stats["constraint_saturated_fraction"] == pytest.approx(expected_fraction, abs=0.05)


def test_bad_arguments_name_the_argument() -> None:
    x = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="kernel='l3' is not allowed"):
        LionK([x], kernel="l3")
    with pytest.raises(ValueError, match=r"betas\[1\]=1.5 is not allowed"):
        Lion([x], betas=(0.9, 1.5))
