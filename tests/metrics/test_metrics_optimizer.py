"""Optimizer-dependent metrics: memory coefficients, correction term (value and sign per family),
Lion's constraint, adaptive-memory beta_t, gradient / weight norms and the update-to-weight ratio."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from memexp.config import MetricsConfig, MetricsTier
from memexp.metrics import compute_metrics
from memexp.metrics.optimizer_family import memory_family
from memexp.optim import OPTIMIZERS
from memexp.optim.memory import MemoryFamily, adam_lag, heavy_ball_coefficients, lion_coefficients
from tests.metrics.metrics_helpers import Quadratic, mean_output, quadratic_batch


class Lion(torch.optim.Optimizer):
    """Lion as in the paper, written outside memexp: it carries memexp's description of Lion (the
    attribute the registry's builder sets), which is all the metrics read."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0) -> None:  # noqa: ANN001
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        self.optimizer_info = OPTIMIZERS.get("lion").info

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                c = beta1 * m + (1 - beta1) * p.grad
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(torch.sign(c), alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


class AdaptiveMomentum(torch.optim.SGD):
    """An optimizer exposing per-tensor adaptive beta_t the way memexp's AM optimizers do."""

    def step(self, closure=None):  # noqa: ANN001, ANN201
        self.last_stats = {"beta": {"w": 0.2, "b": 0.8, "c": 0.5}, "offset": "taylor"}
        return super().step(closure)


def brute_heavy_ball(beta: float, n: int) -> tuple[float, float]:
    b = Fraction(beta)
    s = [sum(b**k for k in range(j + 1)) for j in range(n + 1)]
    return float(s[n]), float(sum(b**k * sum(s[j] for j in range(n - k, n)) for k in range(1, n + 1)))


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 40])
def test_memory_coefficients_match_the_literal_sums(beta: float, n: int) -> None:
    s_n, c_n = heavy_ball_coefficients(beta, n)
    s_ref, c_ref = brute_heavy_ball(beta, n)
    assert s_n == pytest.approx(s_ref, rel=1e-12) and c_n == pytest.approx(c_ref, rel=1e-9, abs=1e-12)
    b = Fraction(beta)
    a_ref = sum(k * (1 - b) * b**k for k in range(n + 1)) / (1 - b ** (n + 1))
    assert adam_lag(beta, n) == pytest.approx(float(a_ref), rel=1e-9, abs=1e-12)
    beta1 = Fraction(0.9)
    w = [1 - beta1] + [beta1 * (1 - b) * b ** (k - 1) for k in range(1, n + 1)]
    w_n, c_lion = lion_coefficients(0.9, beta, n)
    assert w_n == pytest.approx(float(sum(w)), rel=1e-12)
    assert c_lion == pytest.approx(float(sum(k * wk for k, wk in enumerate(w))), rel=1e-9, abs=1e-12)


def test_memory_coefficients_tend_to_the_spec_limits() -> None:
    s_n, c_n = heavy_ball_coefficients(0.9, 5000)
    assert c_n / (2 * s_n) == pytest.approx(0.9 / (2 * 0.1**2), rel=1e-9)
    assert adam_lag(0.999, 200000) == pytest.approx(999.0, rel=1e-9)
    w_n, c_lion = lion_coefficients(0.9, 0.99, 20000)
    assert c_lion / w_n == pytest.approx(0.9 / 0.01, rel=1e-9)


def quadratic_problem(optimizer_factory, steps: int = 3, weight_decay_start: float = 1.0):  # noqa: ANN001, ANN201
    matrix = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    model = Quadratic(
        matrix,
        shift=torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64),
        start=torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * weight_decay_start,
    )
    optimizer = optimizer_factory(model.parameters())
    batch = quadratic_batch()
    for _ in range(steps):
        optimizer.zero_grad()
        mean_output(model(batch[0]), batch[1]).backward()
        optimizer.step()
    return model, optimizer, batch, matrix


def economy(**overrides) -> MetricsConfig:  # noqa: ANN003
    return MetricsConfig(every=1, tier=MetricsTier.economy, **overrides)


def test_heavy_ball_correction_is_the_twins_penalty_and_regularizes() -> None:
    model, optimizer, batch, matrix = quadratic_problem(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), steps=3)
    out = compute_metrics(model, mean_output, batch, optimizer, economy(), step=3)
    g = matrix @ model.x.detach() + model.shift
    s_n, c_n = heavy_ball_coefficients(0.9, 3)
    assert out["geom/grad_l2sq"] == pytest.approx(float(g @ g), rel=1e-12)
    assert out["geom/grad_l1"] == pytest.approx(float(g.abs().sum()), rel=1e-12)
    assert out["geom/correction"] == pytest.approx(0.05 * c_n / (2 * s_n) * float(g @ g), rel=1e-12)
    assert out["geom/correction_sign"] == 1.0


def test_heavy_ball_with_coupled_weight_decay_penalizes_the_regularized_gradient() -> None:
    model, optimizer, batch, matrix = quadratic_problem(
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=0.1), steps=2
    )
    out = compute_metrics(model, mean_output, batch, optimizer, economy(), step=2)
    g = matrix @ model.x.detach() + model.shift + 0.1 * model.x.detach()
    s_n, c_n = heavy_ball_coefficients(0.5, 2)
    assert out["geom/correction"] == pytest.approx(0.05 * c_n / (2 * s_n) * float(g @ g), rel=1e-12)
    assert "geom/lion_saturation" not in out  # SGD's decay is coupled: no box constraint


@pytest.mark.parametrize(("betas", "expected_sign"), [((0.9, 0.999), -1.0), ((0.9, 0.9), 0.0), ((0.99, 0.9), 1.0)])
def test_adam_correction_sign_is_regularizing_iff_beta1_exceeds_beta2(betas, expected_sign) -> None:  # noqa: ANN001
    model, optimizer, batch, matrix = quadratic_problem(lambda p: torch.optim.AdamW(p, lr=0.01, betas=betas), steps=4)
    out = compute_metrics(model, mean_output, batch, optimizer, economy(), step=4)
    g = matrix @ model.x.detach() + model.shift
    n = 4  # AdamW's own step count
    coef = 0.01 * (adam_lag(betas[0], n) - adam_lag(betas[1], n))
    # AdamW's default decoupled decay 0.01 adds 0.01 (x.g - L) to the norm (docs/memory_theory.md).
    with torch.no_grad():
        x, loss = model.x.detach(), float(mean_output(model(batch[0]), batch[1]))
    expected = coef * (float(g.abs().sum()) + 0.01 * (float(x @ g) - loss))
    assert out["geom/correction"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert out["geom/correction_sign"] == expected_sign


def test_lion_correction_regularizes_and_plain_sgd_has_none() -> None:
    model, optimizer, batch, matrix = quadratic_problem(lambda p: Lion(p, lr=0.01, betas=(0.9, 0.99)), steps=3)
    assert memory_family(optimizer) is MemoryFamily.lion
    out = compute_metrics(model, mean_output, batch, optimizer, economy(), step=3)
    g = matrix @ model.x.detach() + model.shift
    w_n, c_n = lion_coefficients(0.9, 0.99, 3)
    assert out["geom/correction"] == pytest.approx(0.01 * c_n / w_n * float(g.abs().sum()), rel=1e-12)
    assert out["geom/correction_sign"] == 1.0
    model, optimizer, batch, _ = quadratic_problem(lambda p: torch.optim.SGD(p, lr=0.1), steps=1)
    out = compute_metrics(model, mean_output, batch, optimizer, economy(), step=1)
    assert out["geom/correction"] == 0.0 and out["geom/correction_sign"] == 0.0


def test_heavy_ball_correction_ratio_uses_one_hessian_vector_product() -> None:
    model, optimizer, batch, matrix = quadratic_problem(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), steps=3)
    cfg = MetricsConfig(every=1, tier=MetricsTier.economy, include=["correction_ratio"])
    out = compute_metrics(model, mean_output, batch, optimizer, cfg, step=3)
    g = matrix @ model.x.detach() + model.shift
    s_n, c_n = heavy_ball_coefficients(0.9, 3)
    # twin: h (s_n g + h c_n H g): |h c_n H g| / |s_n g|
    expected = 0.05 * c_n * float(torch.linalg.vector_norm(matrix @ g)) / (s_n * float(torch.linalg.vector_norm(g)))
    assert out["geom/correction_ratio"] == pytest.approx(expected, rel=1e-9)
    assert out["geom/hvp_count"] == 1.0


def test_lion_constraint_on_hand_made_weights() -> None:
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.tensor([2.0, -1.99, 1.0, 0.0]))  # |x| lambda = 1, .995, .5, 0
    model.b = torch.nn.Parameter(torch.tensor([[0.5, -4.0], [1.98, 0.1]]))  # .25, 2, .99, .05
    model.bias = torch.nn.Parameter(torch.tensor([100.0]))  # not decayed: ignored
    model.forward = lambda inputs: (model.a.sum() + model.b.sum() + model.bias.sum()).expand(inputs.shape[0])
    optimizer = torch.optim.AdamW(
        [{"params": [model.a, model.b], "weight_decay": 0.5}, {"params": [model.bias], "weight_decay": 0.0}], lr=0.1
    )
    out = compute_metrics(
        model,
        mean_output,
        (torch.zeros(2, 1), torch.zeros(2)),
        optimizer,
        MetricsConfig(every=1, include=[], exclude=["correction", "grad_norms"]),
    )
    assert out["geom/lion_linf_lambda/a"] == pytest.approx(1.0)
    assert out["geom/lion_saturation/a"] == pytest.approx(2 / 4)
    assert out["geom/lion_linf_lambda/b"] == pytest.approx(2.0)
    assert out["geom/lion_saturation/b"] == pytest.approx(1 / 4)  # 0.99 itself is not > 0.99
    assert out["geom/lion_linf_lambda"] == pytest.approx(2.0)
    assert out["geom/lion_saturation"] == pytest.approx(3 / 8)
    assert "geom/lion_saturation/bias" not in out


def test_adaptive_beta_stats_come_from_last_stats() -> None:
    model, optimizer, batch, _ = quadratic_problem(lambda p: AdaptiveMomentum(p, lr=0.01, momentum=0.9), steps=1)
    out = compute_metrics(model, mean_output, batch, optimizer, economy(), step=1)
    assert out["geom/am_beta"] == pytest.approx(0.5)
    assert out["geom/am_beta_min"] == pytest.approx(0.2) and out["geom/am_beta_max"] == pytest.approx(0.8)
    assert out["geom/am_beta/b"] == pytest.approx(0.8)
    assert "geom/correction" not in out  # no constant-beta correction for adaptive memory


def test_weight_norm_and_update_ratio_by_hand() -> None:
    model, optimizer, batch, matrix = quadratic_problem(lambda p: torch.optim.SGD(p, lr=0.1), steps=0)
    before = [model.x.detach().clone()]
    g = matrix @ model.x.detach() + model.shift
    optimizer.zero_grad()
    mean_output(model(batch[0]), batch[1]).backward()
    optimizer.step()
    out = compute_metrics(model, mean_output, batch, optimizer, economy(), step=1, weights_before=before)
    assert out["geom/update_ratio"] == pytest.approx(0.1 * float(g.norm()) / float(before[0].norm()), rel=1e-12)
    assert out["geom/update_ratio/x"] == out["geom/update_ratio"]
    assert out["geom/weight_norm"] == pytest.approx(float(model.x.detach().norm()), rel=1e-12)


def test_metrics_leave_training_state_untouched() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    compute_metrics(
        model,
        torch.nn.functional.cross_entropy,
        (x, y),
        optimizer,
        MetricsConfig(every=1, tier=MetricsTier.full, hutchinson_probes=4, sharpness_iters=3),
    )
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_correction_sign_is_the_memorys_direction_even_at_lr_zero() -> None:
    """At the end of a cosine schedule lr = 0, so the correction's value is 0, but its sign still
    says which way the memory pushes (heavy ball and Lion regularize, AdamW with b1 < b2 does not)."""
    import torch as _torch

    from memexp.metrics.probe import Correction

    for make, expected in (
        (lambda p: _torch.optim.SGD(p, lr=0.0, momentum=0.9), 1.0),
        (lambda p: _torch.optim.AdamW(p, lr=0.0, betas=(0.9, 0.999)), -1.0),
    ):
        param = _torch.nn.Parameter(_torch.tensor([1.0, -2.0]))
        optimizer = make([param])
        family = memory_family(optimizer)  # torch's own classes: described by their registry entries
        gradient = _torch.tensor([0.5, 0.25])
        correction = Correction.build(optimizer, family, [optimizer.param_groups[0]], [param], gradient, 10)
        summary = correction.summary()
        assert summary["geom/correction"] == 0.0
        assert summary["geom/correction_sign"] == expected


def test_adaptive_memory_is_recognised_before_its_first_step() -> None:
    import torch as _torch

    from memexp.optim import AdaptiveMemoryAdamW, AdaptiveMemorySGD

    for cls in (AdaptiveMemorySGD, AdaptiveMemoryAdamW):
        optimizer = cls([_torch.nn.Parameter(_torch.zeros(3))], lr=0.1)
        assert memory_family(optimizer) is MemoryFamily.adaptive_memory, cls.__name__


def test_family_is_never_guessed_from_a_class_name() -> None:
    """A class called Lion that memexp has no description of gets no correction (before, its name made
    it "lion"); memexp's own Lion, built by the registry, carries its description."""

    class LionLookalike(torch.optim.SGD):
        pass

    LionLookalike.__name__ = "Lion"
    model, optimizer, batch, _ = quadratic_problem(lambda p: LionLookalike(p, lr=0.01, momentum=0.9), steps=2)
    assert memory_family(optimizer) is None
    out = compute_metrics(model, mean_output, batch, optimizer, economy(), step=2)
    assert "geom/correction" not in out and "geom/lion_linf_lambda" not in out
    built = OPTIMIZERS.build("lion", [{"params": list(model.parameters())}], OPTIMIZERS.get("lion").config())
    assert memory_family(built) is MemoryFamily.lion
