"""Adaptive memory momentum (algorithms.md): hand-written steps, the spec's tests (1)-(5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from memexp.logging import read_metrics
from memexp.optim import OPTIMIZERS, AdaptiveMemoryAdamW, AdaptiveMemorySGD
from tests.conftest import run_memexp
from tests.optim.problems import QuarticProblem, mlp_closure, small_mlp


def hand_am_sgd(
    problem: QuarticProblem, lr: float, beta_max: float, rho: float, wd: float, steps: int, adaptive: bool = True
):
    """Global scope, taylor offset, coupled decay, d_0 = g_0 (written from the spec); ``adaptive=False``:
    β_t pinned at β_max."""
    x, d, out, betas = problem.start.clone(), None, [], []
    for _ in range(steps):
        g = problem.grad(x) + wd * x
        if d is None:
            d = g.clone()
        diff = d - g
        if not adaptive:
            beta = beta_max
        elif (diff**2).sum() == 0:
            beta = 0.0
        else:
            delta_over_lr = g @ d  # Δ = η_{t−1}⟨g, d⟩, constant η
            beta = ((1 + rho) * delta_over_lr - diff @ (g + rho * d)) / (diff @ diff)
            beta = min(max(beta.item(), 0.0), beta_max)
        d = ((beta + rho) * d + (1 - beta) * g) / (1 + rho)
        x = x - lr * d
        out.append(x)
        betas.append(beta)
    return out, betas


def split(flat: torch.Tensor) -> list[torch.Tensor]:
    return [flat[:4], flat[4:]]


def hand_am_adamw(
    problem: QuarticProblem,
    lr: float,
    beta_max: float,
    beta2: float,
    eps: float,
    wd: float,
    rho: float,
    adaptive: bool = True,
    steps: int = 3,
):
    """Per-tensor scope (the problem's two tensors), taylor offset; ``adaptive=False``: β_t pinned at β_max."""
    x = split(problem.start.clone())
    d = [torch.zeros(4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    v = [torch.zeros(4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    product = [1.0, 1.0]
    out = []
    for t in range(1, steps + 1):
        g = split(problem.grad(torch.cat(x)))
        new_x = []
        for i in range(2):
            v[i] = beta2 * v[i] + (1 - beta2) * g[i] ** 2
            p = (1 - beta_max * product[i]) * (torch.sqrt(v[i] / (1 - beta2**t)) + eps)
            if t == 1 or not adaptive:
                beta = beta_max
            else:
                m = 1 / (p * (1 + rho * p))
                diff = d[i] - g[i]
                delta_over_lr = g[i] @ (d[i] / p + wd * x[i])
                numerator = delta_over_lr - (diff * (g[i] + rho * p * d[i]) * m).sum() - wd * (x[i] @ diff)
                denominator = (diff * diff * m).sum()
                beta = min(max((numerator / denominator).item(), 0.0), beta_max)
            d[i] = ((1 - beta) * g[i] + (rho * p + beta) * d[i]) / (1 + rho * p)
            new_x.append((1 - lr * wd) * x[i] - lr * d[i] / p)
            product[i] *= beta
        x = new_x
        out.append(torch.cat(x))
    return out


@pytest.mark.parametrize("foreach", [False, True])
def test_am_sgd_first_three_steps_by_hand(foreach: bool) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    optimizer = AdaptiveMemorySGD(params, lr=0.05, beta_max=0.9, rho=0.1, weight_decay=0.05, foreach=foreach)
    closure = problem.closure(params)
    expected, betas = hand_am_sgd(problem, 0.05, 0.9, 0.1, 0.05, 3)
    for step in range(3):
        optimizer.step(closure)
        torch.testing.assert_close(problem.flat(params), expected[step], rtol=1e-12, atol=1e-12)
        assert optimizer.last_stats["beta_mean"] == pytest.approx(betas[step], rel=1e-12, abs=1e-15)
    assert 0 < betas[2] < 0.9  # the adaptive value, not a clip, is what got checked


@pytest.mark.parametrize("foreach", [False, True])
def test_am_adamw_first_three_steps_by_hand(foreach: bool) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    optimizer = AdaptiveMemoryAdamW(
        params, lr=0.02, betas=(0.85, 0.9), eps=1e-3, weight_decay=0.1, rho=0.2, foreach=foreach
    )
    closure = problem.closure(params)
    expected = hand_am_adamw(problem, 0.02, 0.85, 0.9, 1e-3, 0.1, 0.2)
    for step in range(3):
        optimizer.step(closure)
        torch.testing.assert_close(problem.flat(params), expected[step], rtol=1e-12, atol=1e-12)


def test_equal_gradient_and_memory_leave_the_memory_unchanged() -> None:
    """(1) g = d ⇒ d_{t+1} = d_t whatever β_t is (the weights sum to 1); the guard gives β_t = 0."""
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    optimizer = AdaptiveMemorySGD([x], lr=0.1, rho=0.3)

    def closure() -> torch.Tensor:
        x.grad = None
        loss = (x**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)  # d_0 = g_0
    gradient_now = 2 * x.detach()
    optimizer.state[x]["direction"].copy_(gradient_now)
    optimizer.step(closure)
    torch.testing.assert_close(optimizer.state[x]["direction"], gradient_now, rtol=1e-15, atol=0)
    assert optimizer.last_stats["beta_mean"] == 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda p: AdaptiveMemorySGD(p, lr=0.05, beta_max=0.9),
        lambda p: AdaptiveMemorySGD(p, lr=0.05, beta_max=0.7, scope="per_tensor", rho=0.0),
        lambda p: AdaptiveMemorySGD(p, lr=0.05, offset="carried"),
        lambda p: AdaptiveMemoryAdamW(p, lr=1e-2),
        lambda p: AdaptiveMemoryAdamW(p, lr=1e-2, scope="global", offset="carried"),
    ],
)
def test_beta_stays_in_its_range(make) -> None:
    """(2) β_t ∈ [0, β_max] on every step, and it does adapt (not stuck at one value)."""
    model = small_mlp()
    optimizer = make(model.parameters())
    closure = mlp_closure(model)
    beta_max = optimizer.param_groups[0].get("beta_max", optimizer.param_groups[0].get("betas", (None,))[0])
    seen = []
    for _ in range(40):
        optimizer.step(closure)
        closure.advance()
        stats = optimizer.last_stats
        assert 0.0 <= stats["beta_min"] <= stats["beta_max"] <= beta_max
        assert stats["beta_min"] - 1e-12 <= stats["beta_mean"] <= stats["beta_max"] + 1e-12
        seen.append(stats["beta_mean"])
    assert len({round(b, 12) for b in seen}) >= 3


def proximal_objective(z, g, d, delta, lr, rho, p):
    """max(ℓ_g, ℓ_d) at x_t + z (minus L_t) + the two proximal terms of the spec."""
    planes = torch.maximum(g @ z, delta + d @ z)
    return planes + (z * p * z).sum() / (2 * lr) + rho * ((z + lr * d / p) ** 2 * p**2).sum() / (2 * lr)


def dual_maximum(g, d, delta, lr, rho, p) -> float:
    """max over β ∈ [0, 1] of min_z of the Lagrangian (1−β)ℓ_g + βℓ_d + prox, by ternary search; the
    inner minimiser solves the stationarity equations of that strictly convex quadratic directly."""

    def dual(beta: float) -> float:
        slope = (1 - beta) * g + beta * d
        # ∇_z: slope + P z/η + ρ P²(z + η P⁻¹ d)/η = 0
        z = -(slope + rho * p * d) * lr / (p + rho * p**2)
        lagrangian = (1 - beta) * (g @ z) + beta * (delta + d @ z)
        return (
            lagrangian + (z * p * z).sum() / (2 * lr) + rho * ((z + lr * d / p) ** 2 * p**2).sum() / (2 * lr)
        ).item()

    low, high = 0.0, 1.0
    for _ in range(200):
        a, b = low + (high - low) / 3, high - (high - low) / 3
        low, high = (a, high) if dual(a) < dual(b) else (low, b)
    return dual((low + high) / 2)


@pytest.mark.parametrize("seed", range(6))
def test_am_adamw_step_minimises_the_proximal_model(seed: int) -> None:
    """(3) Random g, d, η, ρ and diagonal P ≻ 0: the step's objective equals the dual maximum
    (strong duality certifies the minimiser), to 1e-10. Catches a missing (1 + ρ) or a sign error."""
    gen = torch.Generator().manual_seed(seed)
    dim = 7
    g = torch.randn(dim, generator=gen, dtype=torch.float64)
    d = torch.randn(dim, generator=gen, dtype=torch.float64)
    target_p = 0.2 + torch.rand(dim, generator=gen, dtype=torch.float64) * 2
    lr = 0.05 + torch.rand((), generator=gen).item() * 0.5
    rho = torch.rand((), generator=gen).item()
    beta2, eps, kappa = 0.5, 1e-3, 0.6
    x = torch.nn.Parameter(torch.randn(dim, generator=gen, dtype=torch.float64))
    x_start = x.detach().clone()
    optimizer = AdaptiveMemoryAdamW([x], lr=lr, betas=(1 - 1e-12, beta2), eps=eps, weight_decay=0.0, rho=rho)
    # Plant the state so that this step (t = 3) sees memory d and preconditioner exactly target_p:
    t = 3
    v_wanted = (target_p / kappa - eps) ** 2 * (1 - beta2**t)
    optimizer.state[x].update(
        step=t - 1,
        direction=d.clone(),
        exp_avg_sq=(v_wanted - (1 - beta2) * g**2) / beta2,
        beta_product=torch.tensor((1 - kappa) / (1 - 1e-12), dtype=torch.float64),
        previous_lr=lr,
    )
    x.grad = g.clone()
    optimizer.step()
    z = x.detach() - x_start
    delta = lr * (g @ (d / target_p))  # taylor: Δ = η_{t−1}⟨g, P⁻¹d⟩
    primal = proximal_objective(z, g, d, delta, lr, rho, target_p).item()
    assert primal == pytest.approx(dual_maximum(g, d, delta, lr, rho, target_p), abs=1e-10)


def test_rho_zero_taylor_beta_is_the_gradient_ratio() -> None:
    """(4) ρ = 0, P = I, taylor: β_t = clip(‖g‖²/‖g − d‖², 0, β_max)."""
    model = small_mlp()
    optimizer = AdaptiveMemorySGD(model.parameters(), lr=0.01, rho=0.0, beta_max=0.95)
    closure = mlp_closure(model)
    for _ in range(5):
        optimizer.step(closure)
        closure.advance()
        params = list(model.parameters())
        memory = [optimizer.state[p]["direction"].clone() for p in params]
        closure()
        grads = [p.grad.clone() for p in params]
        expected = sum((g**2).sum() for g in grads) / sum(((g - m) ** 2).sum() for g, m in zip(grads, memory))
        optimizer.step(closure)
        closure.advance()
        assert optimizer.last_stats["beta_mean"] == pytest.approx(min(expected.item(), 0.95), rel=1e-10)


@pytest.mark.parametrize("foreach", [False, True])
def test_am_adamw_with_constant_beta_is_adamw(foreach: bool) -> None:
    """(5) ρ = 0 and β_t fixed at β_max = β1 reproduces torch.optim.AdamW, bias correction included."""
    models = [small_mlp(), small_mlp()]
    adamw = torch.optim.AdamW(models[0].parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    am = AdaptiveMemoryAdamW(
        models[1].parameters(),
        lr=1e-2,
        betas=(0.9, 0.99),
        eps=1e-8,
        weight_decay=0.1,
        rho=0.0,
        adaptive=False,
        foreach=foreach,
    )
    closures = [mlp_closure(m) for m in models]
    for _ in range(25):
        adamw.step(closures[0])
        am.step(closures[1])
        for c in closures:
            c.advance()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_carried_offset_needs_global_scope() -> None:
    x = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="offset='carried' is not allowed: taylor when scope=per_tensor"):
        AdaptiveMemoryAdamW([x], offset="carried", scope="per_tensor")


# ---------------------------------------------------------------------------------------------
# The control arms of seed 003 (conf/optimizer/am_*_constant.yaml, conf/experiment/adaptive_memory.yaml)


@pytest.mark.parametrize(("adaptive", "control"), [("am_sgd", "am_sgd_constant"), ("am_adamw", "am_adamw_constant")])
def test_each_control_arm_differs_from_its_adaptive_optimizer_only_in_adaptivity(compose, adaptive, control) -> None:
    values = {
        name: OmegaConf.to_container(compose([f"optimizer={name}"]).optimizer, resolve=True)
        for name in (adaptive, control)
    }
    assert {key for key in values[adaptive] if values[adaptive][key] != values[control][key]} == {"adaptive"}
    assert values[adaptive]["adaptive"] is True and values[control]["adaptive"] is False


def built(compose, overrides: list[str], params: list[torch.Tensor]):
    cfg = OmegaConf.to_object(compose(overrides).optimizer)
    return cfg, OPTIMIZERS.build(cfg.name, [{"params": params}], cfg)


def test_am_sgd_control_is_am_sgd_with_beta_pinned_at_beta_max(compose) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    cfg, optimizer = built(compose, ["optimizer=am_sgd_constant", "optimizer.lr=0.05"], params)
    closure = problem.closure(params)
    pinned, betas = hand_am_sgd(problem, 0.05, cfg.beta_max, cfg.rho, cfg.weight_decay, 3, adaptive=False)
    adapted, adaptive_betas = hand_am_sgd(problem, 0.05, cfg.beta_max, cfg.rho, cfg.weight_decay, 3)
    for step in range(3):
        optimizer.step(closure)
        torch.testing.assert_close(problem.flat(params), pinned[step], rtol=1e-12, atol=1e-12)
        assert optimizer.last_stats["beta_mean"] == pytest.approx(0.9, rel=1e-12)
    assert betas == [0.9, 0.9, 0.9] and adaptive_betas[2] < 0.8  # pinning is what the check tells apart
    assert (pinned[2] - adapted[2]).abs().max() > 1e-4


def test_am_adamw_control_is_am_adamw_with_beta_pinned_at_beta_max(compose) -> None:
    problem = QuarticProblem()
    params = problem.parameters()
    # lr 0.3: on this problem the adaptive β_t leaves its cap from step 5 on (0.79 at step 5).
    cfg, optimizer = built(compose, ["optimizer=am_adamw_constant", "optimizer.lr=0.3"], params)
    closure = problem.closure(params)
    arguments = (problem, 0.3, cfg.beta_max, cfg.beta2, cfg.eps, cfg.weight_decay, cfg.rho)
    pinned = hand_am_adamw(*arguments, adaptive=False, steps=8)
    adapted = hand_am_adamw(*arguments, steps=8)
    for step in range(8):
        optimizer.step(closure)
        torch.testing.assert_close(problem.flat(params), pinned[step], rtol=1e-12, atol=1e-12)
        assert optimizer.last_stats["beta_min"] == optimizer.last_stats["beta_max"] == pytest.approx(0.89, rel=1e-12)
    assert (pinned[7] - adapted[7]).abs().max() > 1e-3


@pytest.mark.parametrize(("optimizer", "pinned"), [("am_adamw", None), ("am_adamw_constant", 0.89), ("am_sgd", None)])
def test_beta_is_logged_at_every_log_step(tmp_path: Path, optimizer: str, pinned: float | None) -> None:
    """optim/beta_mean, _min, _max in every log step's event (not only at metrics passes)."""
    run_dir = tmp_path / "run"
    result = run_memexp(
        "train", f"optimizer={optimizer}", "trainer=quick", "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = [e for e in read_metrics(run_dir / "metrics.jsonl") if "train/batch_loss" in e]
    assert [e["step"] for e in events] == [5, 10, 15, 20]
    cap = 0.89 if optimizer.startswith("am_adamw") else 0.9
    for event in events:
        low, mean, high = event["optim/beta_min"], event["optim/beta_mean"], event["optim/beta_max"]
        assert 0.0 <= low <= high <= cap + 1e-7, event
        assert low - 1e-6 <= mean <= high + 1e-6, event  # a float32 mean of equal values may round
        if pinned is not None:
            assert low == high == pytest.approx(pinned, rel=1e-7)
    if pinned is None and optimizer == "am_adamw":
        assert min(e["optim/beta_min"] for e in events) < 0.85  # per-tensor β_t does move below its cap


def test_per_tensor_and_multi_tensor_kernels_agree() -> None:
    """The AM step kernels, called directly on the same tensors: per-tensor and torch._foreach_* give
    the same memories and parameters (float64, to rounding), β's different per tensor."""
    from memexp.optim.am_adamw import _adamw_update_foreach, _adamw_update_single
    from memexp.optim.am_sgd import (
        _sgd_beta_terms_foreach,
        _sgd_beta_terms_single,
        _sgd_update_foreach,
        _sgd_update_single,
    )

    generator = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,), (2, 2, 2)]

    def tensors(positive: bool = False) -> list[torch.Tensor]:
        made = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
        return [t.abs() + 0.5 for t in made] if positive else made

    params, grads, directions, precond = tensors(), tensors(), tensors(), tensors(positive=True)
    betas = [torch.tensor(b, dtype=torch.float64) for b in (0.1, 0.5, 0.85)]
    single_terms = _sgd_beta_terms_single(grads, directions, 0.1, True)
    multi_terms = _sgd_beta_terms_foreach(grads, directions, 0.1, True)
    for single, multi in zip(single_terms, multi_terms):
        torch.testing.assert_close(torch.stack(single), torch.stack(multi), rtol=1e-14, atol=1e-15)
    kernel_pairs = {
        "am_sgd": [
            lambda p, d, k=k: k(p, grads, d, betas, 0.1, 0.05) for k in (_sgd_update_single, _sgd_update_foreach)
        ],
        "am_adamw": [
            lambda p, d, k=k: k(p, grads, d, precond, betas, 0.1, 0.05, 0.01)
            for k in (_adamw_update_single, _adamw_update_foreach)
        ],
    }
    for name, kernels in kernel_pairs.items():
        results = []
        for kernel in kernels:
            moved, memories = [t.clone() for t in params], [t.clone() for t in directions]
            kernel(moved, memories)
            results.append(moved + memories)
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15, msg=name)
        assert not torch.equal(results[0][0], params[0])  # the kernels did move the parameters
