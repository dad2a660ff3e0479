"""Memoryless-corrected twins (memoryless.md): hand-written updates, coefficients, Hessian-vector
products, the O(h²)/O(h) trajectory theorem and the sign of the correction."""

from __future__ import annotations

import math

import pytest
import torch

from memexp.optim import Lion, MemorylessAdamW, MemorylessLion, MemorylessSGD
from memexp.optim.closure_hvp import RNGSnapshot, hessian_vector_product
from memexp.optim.memory import adam_lag, heavy_ball_coefficients, lion_lag_ratio
from tests.optim.problems import QuarticProblem, mlp_closure, small_mlp

# -- the finite-n coefficients, against the literal sums of the spec --------------------------------


def literal_heavy_ball(beta: float, n: int) -> tuple[float, float]:
    s = [math.fsum(beta**k for k in range(j + 1)) for j in range(n + 1)]
    c = math.fsum(beta**k * math.fsum(s[b] for b in range(n - k, n)) for k in range(1, n + 1))
    return s[n], c


def literal_adam_lag(beta: float, n: int) -> float:
    return math.fsum(k * (1 - beta) * beta**k / (1 - beta ** (n + 1)) for k in range(n + 1))


def literal_lion_ratio(beta1: float, beta2: float, n: int) -> float:
    weights = [1 - beta1] + [beta1 * (1 - beta2) * beta2 ** (k - 1) for k in range(1, n + 1)]
    return math.fsum(k * w for k, w in enumerate(weights)) / math.fsum(weights)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 40, 300])
def test_coefficients_equal_the_literal_sums(beta: float, n: int) -> None:
    s, c = heavy_ball_coefficients(beta, n)
    s_ref, c_ref = literal_heavy_ball(beta, n)
    assert s == pytest.approx(s_ref, rel=1e-12)
    assert c == pytest.approx(c_ref, rel=1e-10, abs=1e-300)
    assert adam_lag(beta, n) == pytest.approx(literal_adam_lag(beta, n), rel=1e-10, abs=1e-300)
    assert lion_lag_ratio(0.9, beta, n) == pytest.approx(literal_lion_ratio(0.9, beta, n), rel=1e-10, abs=1e-300)


def test_coefficients_approach_their_limits() -> None:
    beta = 0.9
    s, c = heavy_ball_coefficients(beta, 2000)
    assert s == pytest.approx(1 / (1 - beta), rel=1e-12)
    assert c / s == pytest.approx(beta / (1 - beta) ** 2, rel=1e-12)  # h·c/s → h·β/(1−β)²
    assert adam_lag(beta, 2000) == pytest.approx(beta / (1 - beta), rel=1e-12)
    assert lion_lag_ratio(0.9, 0.99, 20000) == pytest.approx(0.9 / (1 - 0.99), rel=1e-9)


# -- first three steps, by hand, float64 -------------------------------------------------------------


def run_steps(
    optimizer: torch.optim.Optimizer, problem: QuarticProblem, params: list, steps: int
) -> list[torch.Tensor]:
    closure = problem.closure(params)
    trajectory = []
    for _ in range(steps):
        optimizer.step(closure)
        trajectory.append(problem.flat(params))
    return trajectory


def hand_sgd(problem: QuarticProblem, h: float, beta: float, wd: float, scale: float, steps: int) -> list[torch.Tensor]:
    theta, out = problem.start.clone(), []
    for n in range(steps):
        s, c = literal_heavy_ball(beta, n)
        g = problem.grad(theta) + wd * theta
        hessian = problem.hessian(theta) + wd * torch.eye(problem.dim, dtype=torch.float64)
        theta = theta - h * (s * g + h * scale * c * hessian @ g)
        out.append(theta)
    return out


def hand_adamw(
    problem: QuarticProblem, h: float, b1: float, b2: float, eps: float, wd: float, scale: float, steps: int
) -> list[torch.Tensor]:
    theta, out = problem.start.clone(), []
    for n in range(steps):
        g = problem.grad(theta)
        u = g / (g.abs() + eps)
        w = u + wd * theta
        a, b = literal_adam_lag(b1, n), literal_adam_lag(b2, n)
        hw = problem.hessian(theta) @ w
        coefficient = a / (g.abs() + eps) - b * g.abs() / (g.abs() + eps) ** 2
        theta = theta - h * (w + h * scale * hw * coefficient)
        out.append(theta)
    return out


def hand_lion(problem: QuarticProblem, h: float, b1: float, b2: float, wd: float, scale: float, steps: int):
    theta, out = problem.start.clone(), []
    for n in range(steps):
        g = problem.grad(theta)
        v = torch.sign(g) + wd * theta
        ratio = literal_lion_ratio(b1, b2, n)
        theta = theta * (1 - h * wd) - h * torch.sign(g + h * scale * ratio * problem.hessian(theta) @ v)
        out.append(theta)
    return out


@pytest.mark.parametrize("foreach", [False, True])
def test_sgd_twin_first_three_steps(foreach: bool) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    optimizer = MemorylessSGD(
        params, lr=0.05, momentum=0.8, weight_decay=0.1, correction_scale=0.7, hvp="double_backward", foreach=foreach
    )
    got = run_steps(optimizer, problem, params, 3)
    for step, (a, b) in enumerate(zip(got, hand_sgd(problem, 0.05, 0.8, 0.1, 0.7, 3))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"step {step}")


@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_twin_first_three_steps(foreach: bool) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    optimizer = MemorylessAdamW(
        params, lr=0.01, betas=(0.8, 0.95), eps=0.3, weight_decay=0.1, hvp="double_backward", foreach=foreach
    )
    got = run_steps(optimizer, problem, params, 3)
    for step, (a, b) in enumerate(zip(got, hand_adamw(problem, 0.01, 0.8, 0.95, 0.3, 0.1, 1.0, 3))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"step {step}")


@pytest.mark.parametrize("foreach", [False, True])
def test_lion_twin_first_three_steps(foreach: bool) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    optimizer = MemorylessLion(
        params, lr=0.01, betas=(0.9, 0.99), weight_decay=0.3, hvp="double_backward", foreach=foreach
    )
    got = run_steps(optimizer, problem, params, 3)
    for step, (a, b) in enumerate(zip(got, hand_lion(problem, 0.01, 0.9, 0.99, 0.3, 1.0, 3))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"step {step}")


TWINS = {
    "sgd": lambda p, foreach: MemorylessSGD(p, lr=0.05, momentum=0.8, weight_decay=0.1, foreach=foreach),
    "adamw": lambda p, foreach: MemorylessAdamW(p, lr=0.01, betas=(0.8, 0.95), eps=1e-3, foreach=foreach),
    "lion": lambda p, foreach: MemorylessLion(p, lr=0.01, betas=(0.9, 0.99), weight_decay=0.3, foreach=foreach),
}


@pytest.mark.parametrize("name", list(TWINS))
def test_fused_multi_tensor_path_equals_the_per_tensor_path(name: str) -> None:
    """The foreach kernels and the per-tensor loop take the same steps and report the same statistics
    (float64, several tensors, the default finite-difference H·v, steps past n = 0 where the correction is on)."""
    runs = []
    for foreach in (False, True):
        model = small_mlp(seed=3)
        params = list(model.parameters())
        optimizer = TWINS[name](params, foreach)
        closure = mlp_closure(model)
        stats = []
        for _ in range(4):
            optimizer.step(closure)
            closure.advance()
            stats.append(optimizer.last_stats)
        runs.append((torch.cat([p.detach().flatten() for p in params]), stats))
    (reference, reference_stats), (fused, fused_stats) = runs
    assert not torch.equal(reference, torch.cat([p.detach().flatten() for p in small_mlp(seed=3).parameters()]))
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    assert reference_stats[-1]["correction_norm"] > 0
    for step, (want, got) in enumerate(zip(reference_stats, fused_stats)):
        assert set(got) == set(want)
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), f"step {step}: {key}"


def test_first_step_equals_the_original_optimizer() -> None:
    """A_0 = B_0 = C_0 = c_0 = 0: twin and original agree on the first step (the finite-n point)."""
    problem = QuarticProblem()
    pairs = [
        (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), lambda p: MemorylessSGD(p, lr=0.05, momentum=0.9)),
        (
            lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
            lambda p: MemorylessAdamW(p, lr=0.01, weight_decay=0.1),
        ),
        (lambda p: Lion(p, lr=0.01, weight_decay=0.1), lambda p: MemorylessLion(p, lr=0.01, weight_decay=0.1)),
    ]
    for make_original, make_twin in pairs:
        original_params, twin_params = problem.parameters(), problem.parameters()
        make_original(original_params).step(problem.closure(original_params))
        make_twin(twin_params).step(problem.closure(twin_params))
        torch.testing.assert_close(problem.flat(original_params), problem.flat(twin_params), rtol=1e-12, atol=1e-12)


# -- Hessian-vector products -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "tolerance"), [("central", 1e-8), ("forward", 1e-4), ("double_backward", 1e-13)])
def test_hvp_matches_the_dense_hessian(method: str, tolerance: float) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    closure = problem.closure(params)
    rng = RNGSnapshot(params)
    closure(create_graph=method == "double_backward")
    vector = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    vectors = [vector[:4].reshape(2, 2), vector[4:]]
    products = hessian_vector_product(method, params, vectors, closure, rng).materialize_()
    expected = problem.hessian(problem.start) @ vector
    error = torch.linalg.vector_norm(problem.flat(products) - expected) / torch.linalg.vector_norm(expected)
    assert error < tolerance


@pytest.mark.parametrize("method", ["forward", "central"])
def test_finite_difference_restores_parameters_grads_and_rng(method: str) -> None:
    """Dropout model: the perturbed passes must replay the real pass's mask (else the difference is
    O(1)), and afterwards parameters, .grad tensors and the RNG stream are exactly as before."""
    model = small_mlp(dropout=0.5)
    params = list(model.parameters())
    x = torch.randn(32, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def closure(create_graph: bool = False) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        loss.backward(create_graph=create_graph)
        return loss

    torch.manual_seed(123)
    rng = RNGSnapshot(params)
    closure()
    before = [p.detach().clone() for p in params]
    grads = [p.grad for p in params]
    grads_copy = [g.clone() for g in grads]
    state_after_first_pass = torch.get_rng_state()
    vectors = [torch.randn_like(p) for p in params]
    torch.set_rng_state(state_after_first_pass)
    storage = [p.data_ptr() for p in params]
    result = hessian_vector_product(method, params, vectors, closure, rng)
    assert [p.data_ptr() for p in params] == storage  # the perturbed copies were swapped back out
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(p.grad is g and torch.equal(g, c) for p, g, c in zip(params, grads, grads_copy))
    assert torch.equal(torch.get_rng_state(), state_after_first_pass)
    # The same mask with double backward gives the exact product.
    torch.manual_seed(123)
    closure(create_graph=True)
    exact = hessian_vector_product("double_backward", params, vectors, closure, None).materialize_()
    if method == "forward":
        # g + c·H·v from the difference's parts (one lerp) equals the sum formed from H·v itself.
        factor = 0.37
        combined = result.gradient_plus(grads, factor)
        products = result.materialize_()
        for c, g, hv in zip(combined, grads, products, strict=True):
            torch.testing.assert_close(c, g + factor * hv, rtol=1e-12, atol=1e-12)
    else:
        products = result.materialize_()
    error = max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(products, exact))
    assert error < (1e-4 if method == "forward" else 1e-7)


def test_finite_difference_hvp_works_where_double_backward_does_not() -> None:
    """Fused attention (here CPU's flash kernel of scaled_dot_product_attention) has no double
    backward; the default finite difference runs there and agrees with double backward through the
    math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def run(method: str, backend: SDPBackend) -> torch.Tensor:
        torch.manual_seed(0)
        projection = torch.nn.Linear(8, 24).double()

        def closure(create_graph: bool = False) -> torch.Tensor:
            projection.zero_grad(set_to_none=True)
            q, k, v = projection(x).split(8, dim=-1)
            with sdpa_kernel(backend):
                loss = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).square().mean()
            loss.backward(create_graph=create_graph)
            return loss

        optimizer = MemorylessSGD(projection.parameters(), lr=0.5, momentum=0.9, hvp=method)
        for _ in range(3):
            optimizer.step(closure)
        return torch.cat([p.detach().reshape(-1) for p in projection.parameters()])

    with pytest.raises(RuntimeError, match="not implemented"):
        run("double_backward", SDPBackend.FLASH_ATTENTION)
    exact = run("double_backward", SDPBackend.MATH)
    torch.testing.assert_close(run("central", SDPBackend.FLASH_ATTENTION), exact, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(run("forward", SDPBackend.FLASH_ATTENTION), exact, rtol=1e-5, atol=1e-7)


def test_double_backward_needs_a_closure_that_accepts_create_graph() -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    closure = problem.closure(params)
    optimizer = MemorylessSGD(params, lr=0.01, hvp="double_backward")
    with pytest.raises(RuntimeError, match="create_graph"):
        optimizer.step(lambda: closure())
    with pytest.raises(ValueError, match="hvp='backward' is not allowed"):
        MemorylessSGD(params, hvp="backward")


# -- the theorem: O(h²) with the correction, O(h) without ---------------------------------------------


def max_distance(make_original, make_twin, problem: QuarticProblem, steps: int) -> float:
    original_params, twin_params = problem.parameters(), problem.parameters()
    original, twin = make_original(original_params), make_twin(twin_params)
    original_closure, twin_closure = problem.closure(original_params), problem.closure(twin_params)
    distance = 0.0
    for _ in range(steps):
        original.step(original_closure)
        twin.step(twin_closure)
        gap = torch.linalg.vector_norm(problem.flat(original_params) - problem.flat(twin_params)).item()
        distance = max(distance, gap)
    return distance


def fitted_slope(step_sizes: list[float], distances: list[float]) -> float:
    x, y = torch.tensor(step_sizes).log(), torch.tensor(distances).log()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x * x).sum())


@pytest.mark.parametrize("correction", [True, False])
def test_heavy_ball_trajectory_distance_scales_like_h_squared_with_correction(correction: bool) -> None:
    # λ_max(H) ≈ 4 along the path: h·λ_max ≤ 0.08 is inside the asymptotic regime (memoryless.md).
    problem, beta, horizon = QuarticProblem(quartic=0.2, start_scale=0.5), 0.5, 1.0
    step_sizes = [0.02, 0.01, 0.005, 0.0025]
    distances = [
        max_distance(
            lambda p, h=h: torch.optim.SGD(p, lr=h, momentum=beta),
            lambda p, h=h: MemorylessSGD(p, lr=h, momentum=beta, correction=correction, hvp="double_backward"),
            problem,
            round(horizon / h),
        )
        for h in step_sizes
    ]
    slope = fitted_slope(step_sizes, distances)
    assert (1.7 <= slope <= 2.3) if correction else (0.7 <= slope <= 1.3), (slope, distances)


@pytest.mark.parametrize("correction", [True, False])
def test_adamw_trajectory_distance_scales_like_h_squared_with_correction(correction: bool) -> None:
    problem, horizon = QuarticProblem(quartic=0.2, start_scale=0.5), 0.5
    step_sizes = [0.004, 0.002, 0.001]  # 0.0005 too gives 1.99 / 0.95; left out to keep the suite fast
    settings = dict(betas=(0.9, 0.9), eps=0.5, weight_decay=0.1)
    distances = [
        max_distance(
            lambda p, h=h: torch.optim.AdamW(p, lr=h, **settings),
            lambda p, h=h: MemorylessAdamW(p, lr=h, correction=correction, hvp="double_backward", **settings),
            problem,
            round(horizon / h),
        )
        for h in step_sizes
    ]
    slope = fitted_slope(step_sizes, distances)
    assert (1.7 <= slope <= 2.3) if correction else (0.7 <= slope <= 1.3), (slope, distances)


# -- the sign of the correction -----------------------------------------------------------------------


def correction_against_gradient_norm_gradient(optimizer_factory, problem: QuarticProblem, steps: int = 5):
    """Run a few steps, then return (implicit penalty, ⟨correction, ∇‖g‖⟩ sign) at the last step."""
    params = problem.parameters()
    optimizer = optimizer_factory(params)
    closure = problem.closure(params)
    for _ in range(steps):
        optimizer.step(closure)
    return optimizer.last_stats


def test_heavy_ball_correction_regularizes() -> None:
    """h·c_n·H·g = ∇(h·c_n/2·‖g‖²): the correction descends the gradient norm (penalty > 0)."""
    problem = QuarticProblem()
    stats = correction_against_gradient_norm_gradient(
        lambda p: MemorylessSGD(p, lr=0.01, momentum=0.9, hvp="double_backward"), problem
    )
    assert stats["implicit_penalty"] > 0
    # The step is −h·(s·g + h·c·H·g) = −h·s·∇(L + h·c/(2s)·‖g‖²): check the identity at a point.
    theta = problem.start
    g, hessian = problem.grad(theta), problem.hessian(theta)
    s, c = heavy_ball_coefficients(0.9, 4)
    theta_var = theta.clone().requires_grad_(True)
    modified = problem.loss(theta_var) + 0.01 * c / (2 * s) * (problem.grad(theta_var) ** 2).sum()
    (modified_grad,) = torch.autograd.grad(modified, theta_var)
    torch.testing.assert_close(s * modified_grad, s * g + 0.01 * c * hessian @ g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("betas", "regularizes"), [((0.9, 0.999), False), ((0.99, 0.9), True)])
def test_adamw_correction_sign_follows_beta1_minus_beta2(betas: tuple[float, float], regularizes: bool) -> None:
    """A − B < 0 for β1 < β2: the twin's ‖∇L‖₁ penalty is negative (memory anti-regularizes)."""
    problem = QuarticProblem()
    stats = correction_against_gradient_norm_gradient(
        lambda p: MemorylessAdamW(p, lr=1e-3, betas=betas, eps=1e-12, weight_decay=0.0, hvp="double_backward"),
        problem,
        steps=50,
    )
    assert (stats["implicit_penalty"] > 0) == regularizes
    # Modified-loss identity (ε → 0, λ = 0): step direction = diag(1/|g|)·∇[L + h(A−B)‖∇L‖₁].
    theta = problem.start
    a, b = adam_lag(betas[0], 49), adam_lag(betas[1], 49)
    h = 1e-3
    theta_var = theta.clone().requires_grad_(True)
    modified = problem.loss(theta_var) + h * (a - b) * problem.grad(theta_var).abs().sum()
    (modified_grad,) = torch.autograd.grad(modified, theta_var)
    g = problem.grad(theta)
    u = g / g.abs()
    twin = u + h * (problem.hessian(theta) @ u) * (a / g.abs() - b * g.abs() / g.abs() ** 2)
    torch.testing.assert_close(twin, modified_grad / g.abs(), rtol=1e-10, atol=1e-12)


def test_lion_correction_regularizes_and_matches_the_modified_loss() -> None:
    """λ = 0: sign(g + h·(C/W)·H·sign(g)) = sign(∇[L + h·(C/W)·‖∇L‖₁]) and the penalty is positive."""
    problem = QuarticProblem()
    stats = correction_against_gradient_norm_gradient(
        lambda p: MemorylessLion(p, lr=0.01, hvp="double_backward"), problem, steps=20
    )
    assert stats["implicit_penalty"] > 0
    h, ratio = 0.05, lion_lag_ratio(0.9, 0.99, 30)
    theta = problem.start
    theta_var = theta.clone().requires_grad_(True)
    modified = problem.loss(theta_var) + h * ratio * problem.grad(theta_var).abs().sum()
    (modified_grad,) = torch.autograd.grad(modified, theta_var)
    argument = problem.grad(theta) + h * ratio * problem.hessian(theta) @ torch.sign(problem.grad(theta))
    torch.testing.assert_close(argument, modified_grad, rtol=1e-12, atol=1e-12)
    # and the twin's step uses exactly that sign: one step from θ at n = 30 by hand vs the optimizer
    params = problem.parameters()
    twin = MemorylessLion(params, lr=h, hvp="double_backward")
    for p in params:
        twin.state[p]["step"] = 30
    twin.step(problem.closure(params))
    torch.testing.assert_close(problem.flat(params), theta - h * torch.sign(modified_grad), rtol=0, atol=1e-15)
    assert 0.0 <= twin.last_stats["sign_flip_fraction"] <= 1.0


def test_correction_scale_zero_and_correction_off_agree() -> None:
    problem = QuarticProblem()
    results = []
    for kwargs in (dict(correction=False), dict(correction_scale=0.0)):
        params = problem.parameters()
        run_steps(MemorylessSGD(params, lr=0.05, momentum=0.9, **kwargs), problem, params, 5)
        results.append(problem.flat(params))
    assert torch.equal(results[0], results[1])


def test_lion_decoupled_decay_adds_its_term_to_the_modified_loss() -> None:
    """λ > 0: H·(sign g + λθ) = ∇(‖∇L‖₁ + λ(θ·∇L − L)), so the twin's sign argument is the gradient of
    L + h·(C/W)·(‖∇L‖₁ + λ(θ·∇L − L)), and ``implicit_penalty`` is that term at θ (float64, by hand)."""
    problem = QuarticProblem()
    h, lam, n = 0.02, 0.7, 12
    ratio = literal_lion_ratio(0.9, 0.99, n)
    theta = problem.start
    theta_var = theta.clone().requires_grad_(True)
    grad_var = problem.grad(theta_var)
    penalty = h * ratio * (grad_var.abs().sum() + lam * (theta_var @ grad_var - problem.loss(theta_var)))
    (modified_grad,) = torch.autograd.grad(problem.loss(theta_var) + penalty, theta_var)
    g = problem.grad(theta)
    argument = g + h * ratio * problem.hessian(theta) @ (torch.sign(g) + lam * theta)
    torch.testing.assert_close(argument, modified_grad, rtol=1e-12, atol=1e-12)
    params = problem.parameters()
    twin = MemorylessLion(params, lr=h, weight_decay=lam, hvp="double_backward")
    for p in params:
        twin.state[p]["step"] = n
    twin.step(problem.closure(params))
    expected = theta * (1 - h * lam) - h * torch.sign(modified_grad)
    torch.testing.assert_close(problem.flat(params), expected, rtol=0, atol=1e-15)
    assert twin.last_stats["implicit_penalty"] == pytest.approx(float(penalty.detach()), rel=1e-12)
    assert float(penalty.detach()) != pytest.approx(h * ratio * float(g.abs().sum()), rel=1e-3)  # the term matters here


def test_adamw_twin_penalty_includes_the_decoupled_decay_term() -> None:
    """The AdamW twin's w = u + λθ: its penalty is h·(A_n − B_n)·(‖g‖₁ + λ(θ·g − L)), by hand."""
    problem = QuarticProblem()
    h, lam, n, betas = 0.01, 0.4, 6, (0.8, 0.95)
    params = problem.parameters()
    twin = MemorylessAdamW(params, lr=h, betas=betas, weight_decay=lam, hvp="double_backward")
    for p in params:
        twin.state[p]["step"] = n
    twin.step(problem.closure(params))
    theta = problem.start
    g = problem.grad(theta)
    coefficient = h * (literal_adam_lag(betas[0], n) - literal_adam_lag(betas[1], n))
    expected = coefficient * (float(g.abs().sum()) + lam * (float(theta @ g) - float(problem.loss(theta))))
    assert twin.last_stats["implicit_penalty"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
@pytest.mark.parametrize("n", [1, 2, 5, 255, 256, 3000])
def test_coefficients_are_exact_where_the_closed_forms_cancel(beta: float, n: int) -> None:
    """Against the sums in 60-digit decimal arithmetic: the closed forms lost up to 8e-5 relative at
    beta = 0.9999, n = 2; the recurrences (n(1-beta) < 40) and the closed forms beyond are exact to 1e-13."""
    from decimal import Decimal, localcontext

    with localcontext() as context:
        context.prec = 60
        b, one = Decimal(beta), Decimal(1)
        powers = [b**k for k in range(n + 2)]
        lag = sum(k * powers[k - 1] for k in range(1, n + 1))  # L_n
        s = [(one - powers[j + 1]) / (one - b) for j in range(n + 1)]
        c = b * sum(s[j] ** 2 * powers[n - 1 - j] for j in range(n))  # c_n = sum_b s_b^2 beta^(n-b)
        ratio = Decimal(0.9) * (one - b) * lag / (one - Decimal(0.9) * powers[n])
        mean_age = b * lag / s[n]
    s_n, c_n = heavy_ball_coefficients(beta, n)
    assert s_n == pytest.approx(float(s[n]), rel=1e-13)
    assert c_n == pytest.approx(float(c), rel=1e-13)
    assert adam_lag(beta, n) == pytest.approx(float(mean_age), rel=1e-13)
    assert lion_lag_ratio(0.9, beta, n) == pytest.approx(float(ratio), rel=1e-13)
