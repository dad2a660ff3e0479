"""The memoryless-corrected twins on stacked parameters: each member's step is its single run's
(memexp/optim/sgd_memoryless.py, adamw_memoryless.py, lion_memoryless.py; docs/memory_theory.md).

A twin's step needs one Hessian-vector product H·v on the step's own batch. A population takes it
per member with the single run's finite difference (memexp.optim.closure_hvp): member m's radius
r_m = rel·max(‖θ_m‖, 1), its perturbation θ_m + s_m·v_m with ‖s_m·v_m‖ = r_m, and one extra
forward-backward of the whole population at the perturbed weights (``gradient_at``, which the
population provides: its own passes, gradient clipping per member, dropout masks replayed). The
members' Hessians are independent blocks, so one perturbed pass serves every member.

``hvp=double_backward`` is refused under the batched launcher (memexp.batched.population.refusal):
the written-out backward of a linear chain is first order only.

The finite-n coefficients (s_n, c_n, the lags A_n and B_n, Lion's C_n/W_n) come from
memexp.optim.memory per member, in Python floats as the single runs compute them, and are cast to
the parameters' dtype once per step, like every other per-member scalar (memexp.batched.optim).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from memexp.optim.closure_hvp import HessianVectorProducts, perturbation_scale, relative_radius
from memexp.optim.memory import MemoryFamily, adam_lag, heavy_ball_coefficients, penalty_coefficient

# gradient_at(vectors, scale, slot): every member's gradients on the step's batch at θ + scale·v
# (``vectors``: [M, n] column blocks, ``scale``: [M, 1]), clipped as the run's closure clips, as column
# blocks of the population's buffer number ``slot`` (0 or 1: a central difference holds two at once).
GradientAt = Callable[[list[Tensor], Tensor, int], list[Tensor]]
# hessian_vector(vectors): every member's H·v for ``vectors`` ([M, n] column blocks) on the step's batch.
HessianVector = Callable[[list[Tensor]], HessianVectorProducts]

TWIN_HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "sgd_memoryless": ("lr", "momentum", "weight_decay", "correction_scale"),
    "adamw_memoryless": ("lr", "beta1", "beta2", "eps", "weight_decay", "correction_scale"),
    "lion_memoryless": ("lr", "beta1", "beta2", "weight_decay", "correction_scale"),
}
# Settings a population shares (config keys that are not batched: jobs differing in them train in
# populations of their own).
FINITE_DIFFERENCES = ("forward", "central")


@dataclass(frozen=True)
class TwinSettings:
    correction: bool = True
    hvp: str = "forward"
    hvp_radius: float | None = None


def member_corrects(name: str, settings: TwinSettings, correction_scale: float, momentum: float) -> bool:
    """Whether a member's twin applies its correction: its single run's ``_group_corrects``
    (correction on, a nonzero scale, and for the heavy-ball twin a nonzero momentum)."""
    return settings.correction and correction_scale != 0 and (name != "sgd_memoryless" or momentum > 0)


def member_norms(blocks: list[Tensor]) -> Tensor:
    """Each member's Euclidean norm over all its columns, [M], from ``[M, n]`` blocks."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b, dim=1) for b in blocks], 1), dim=1)


def member_hessian_vector_products(
    params: list[Tensor],
    vectors: list[Tensor],
    gradients: list[Tensor],
    gradient_at: GradientAt,
    settings: TwinSettings,
) -> HessianVectorProducts:
    """Every member's H·v by its single run's finite difference (closure_hvp._finite_difference),
    the members' scales an ``[M, 1]`` column. ``gradients``: the step's gradients at θ."""
    central = settings.hvp == "central"
    relative = relative_radius(params[0].dtype, central, settings.hvp_radius)
    scale = perturbation_scale(member_norms(params), member_norms(vectors), relative).unsqueeze(1)
    plus = gradient_at(vectors, scale, 0)
    if central:
        minus = gradient_at(vectors, -scale, 1)
        for end, start in zip(plus, minus):
            end.sub_(start).mul_(0.5 / scale)
        return HessianVectorProducts(plus)
    return HessianVectorProducts(plus, gradients, scale.reciprocal())


def twin_scalars(
    name: str, hyper: dict[str, list[float]], lr: list[float], n: int, settings: TwinSettings
) -> dict[str, Tensor]:
    """Step n's per-member scalars (float64, [M]) of a twin, member by member as its single run
    computes them in Python floats. A member that does not correct (``correction_scale`` 0, or SGD
    without momentum) gets a correction coefficient of 0: its update is its plain memoryless one."""
    members = range(len(lr))
    momenta = hyper.get("momentum", [0.0] * len(lr))
    scales = [
        s if member_corrects(name, settings, s, momentum) else 0.0
        for s, momentum in zip(hyper["correction_scale"], momenta)
    ]
    columns: dict[str, list[float]] = {}
    if name == "sgd_memoryless":
        for m in members:
            h, beta, decay = lr[m], hyper["momentum"][m], hyper["weight_decay"][m]
            s_n, c_n = heavy_ball_coefficients(beta, n)
            correction_factor = h * scales[m] * c_n
            columns.setdefault("neg_lr_plain_decayed", []).append(-h * (s_n + correction_factor * decay))
            columns.setdefault("neg_lr_plain", []).append(-h * s_n)
            columns.setdefault("neg_lr_correction", []).append(-h * correction_factor)
    elif name == "adamw_memoryless":
        for m in members:
            h, eps = lr[m], hyper["eps"][m]
            lag1, lag2 = adam_lag(hyper["beta1"][m], n), adam_lag(hyper["beta2"][m], n)
            columns.setdefault("lag2_eps", []).append(lag2 * eps)
            columns.setdefault("lag_difference", []).append(lag1 - lag2)
            columns.setdefault("neg_lr_correction", []).append(-h * h * scales[m])
            columns.setdefault("neg_lr", []).append(-h)
    elif name == "lion_memoryless":
        for m in members:
            h, betas = lr[m], (hyper["beta1"][m], hyper["beta2"][m])
            group = {"lr": h, "betas": betas, "correction_scale": scales[m]}
            columns.setdefault("correction_factor", []).append(penalty_coefficient(MemoryFamily.lion, group, n) or 0.0)
            columns.setdefault("decay_factor", []).append(1 - h * hyper["weight_decay"][m])
            columns.setdefault("neg_lr", []).append(-h)
    else:
        raise ValueError(f"no batched twin {name!r}")
    return {key: torch.tensor(values, dtype=torch.float64) for key, values in columns.items()}


def sgd_memoryless_step(
    params: list[Tensor],
    grads: list[Tensor],
    decayed: int,
    h: dict[str, Tensor],
    hessian_vector: HessianVector | None,
) -> None:
    """θ −= h·(s_n + h·scale·c_n·λ)·(g + λθ) + h·(h·scale·c_n)·H·(g + λθ) (MemorylessSGD._apply)."""
    directions = [g.addcmul(h["weight_decay"], p) if i < decayed else g for i, (p, g) in enumerate(zip(params, grads))]
    products = None if hessian_vector is None else hessian_vector(directions).materialize_()
    for index, (param, direction) in enumerate(zip(params, directions)):
        param.addcmul_(h["neg_lr_plain_decayed"] if index < decayed else h["neg_lr_plain"], direction)
        if products is not None:
            param.addcmul_(h["neg_lr_correction"], products[index])


def adamw_memoryless_step(
    params: list[Tensor],
    grads: list[Tensor],
    decayed: int,
    h: dict[str, Tensor],
    hessian_vector: HessianVector | None,
) -> None:
    """θ −= h²·scale·(H·w)/denom ⊙ [(A − B) + B·ε/denom] + h·w, w = g/denom + λθ, denom = |g| + ε
    (MemorylessAdamW._apply, the same in-place passes)."""
    denoms = [g.abs().add_(h["eps"]) for g in grads]
    directions = [g / d for g, d in zip(grads, denoms)]
    for index in range(decayed):
        directions[index].addcmul_(h["weight_decay"], params[index])
    products = None if hessian_vector is None else hessian_vector(directions).materialize_()
    for index, (param, direction, denom) in enumerate(zip(params, directions, denoms)):
        if products is not None:
            inverse = denom.reciprocal_()
            products[index].mul_(inverse)
            products[index].mul_(inverse.mul_(h["lag2_eps"]).add_(h["lag_difference"]))
            param.addcmul_(h["neg_lr_correction"], products[index])
        param.addcmul_(h["neg_lr"], direction)


def lion_memoryless_step(
    params: list[Tensor],
    grads: list[Tensor],
    decayed: int,
    h: dict[str, Tensor],
    hessian_vector: HessianVector | None,
) -> None:
    """θ ← θ·(1 − h·λ) − h·sign(g + h·scale·(C_n/W_n)·H·(sign(g) + λθ)) (MemorylessLion._apply)."""
    vectors = [g.sign() for g in grads]
    for index in range(decayed):
        vectors[index].addcmul_(h["weight_decay"], params[index])
    if hessian_vector is None:
        directions = vectors if decayed == 0 else [g.sign() for g in grads]
    else:
        directions = hessian_vector(vectors).gradient_plus(grads, h["correction_factor"])
        for direction in directions:
            direction.sign_()
    for index, (param, direction) in enumerate(zip(params, directions)):
        if index < decayed:
            param.mul_(h["decay_factor"])
        param.addcmul_(h["neg_lr"], direction)


TWIN_STEPS = {
    "sgd_memoryless": sgd_memoryless_step,
    "adamw_memoryless": adamw_memoryless_step,
    "lion_memoryless": lion_memoryless_step,
}
