"""Memoryless-corrected Lion: the twin of :class:`~memexp.optim.Lion` (docs/memory_theory.md).

Lion's direction c_n = β1·m_{n−1} + (1−β1)·g_n is a weighted sum of past gradients,
c_n = Σ_k w_k g_{n−k}, w_0 = 1−β1, w_k = β1(1−β2)β2^{k−1}, with W_n = Σ w_k = 1 − β1·β2^n and
C_n = Σ k·w_k (→ β1/(1−β2)). Past iterates θ_{n−k} ≈ θ + h·k·(sign(g) + λθ), so

    θ_{n+1} = θ_n − h·( sign( g + h·(C_n/W_n)·H·(sign(g) + λθ) ) + λθ ).

C_0 = 0: the first step equals Lion's. Reading (λ = 0): sign(∇[L + h·(C/W)·‖∇L‖₁]): a positive
‖∇L‖₁ penalty, Lion's memory regularizes (unlike AdamW's). sign() is not smooth, so there is no
O(h²) trajectory statement across sign changes; the tests check the correction's sign and the
modified-loss identity instead.

``last_stats``: ``correction_ratio`` = ‖h·scale·(C/W)·H·v‖/‖g‖ (the correction's size inside the
sign), ``sign_flip_fraction`` (coordinates whose step sign the correction flipped),
``implicit_penalty`` = h·scale·(C/W)·(‖g‖₁ + λ(θ·g − L)) (the decay's part from H·λθ = λ∇(θ·∇L − L)),
and Lion's constraint statistics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memexp.optim.base import global_dot, global_l1
from memexp.optim.closure_hvp import HessianVectorProducts
from memexp.optim.lion import check_lion_args, constraint_stats
from memexp.optim.memory import MemoryFamily, hvp_directions, implicit_penalty, penalty_coefficient
from memexp.optim.memoryless_base import MemorylessOptimizer, SquaredNorms, lazy_tensors
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer


@dataclass
class LionMemorylessConfig(OptimizerConfig):
    name: str = "lion_memoryless"
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.0
    correction: bool = True
    correction_scale: float = 1.0
    hvp: str = "forward"
    hvp_radius: float | None = None
    foreach: bool | None = None


class MemorylessLion(MemorylessOptimizer):
    """Memoryless-corrected twin of :class:`~memexp.optim.Lion` (same argument names); no buffers."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = LionMemorylessConfig.lr,
        betas: tuple[float, float] = (LionMemorylessConfig.beta1, LionMemorylessConfig.beta2),
        weight_decay: float = LionMemorylessConfig.weight_decay,
        *,
        correction: bool = LionMemorylessConfig.correction,
        correction_scale: float = LionMemorylessConfig.correction_scale,
        hvp: str = LionMemorylessConfig.hvp,
        hvp_radius: float | None = LionMemorylessConfig.hvp_radius,
        foreach: bool | None = None,
    ) -> None:
        check_lion_args(lr, betas, weight_decay)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            correction=correction,
            correction_scale=correction_scale,
            foreach=foreach,
        )
        super().__init__(params, defaults, hvp, hvp_radius)
        self._decay_groups: list[tuple[float, list[Tensor]]] = []

    def _prepare(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> tuple[Any, list[Tensor]]:
        wd = group["weight_decay"]
        return {}, hvp_directions(MemoryFamily.lion, grads, params, decoupled_decay=wd, foreach=foreach)

    def _apply(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        context: Any,
        hessian_vector: HessianVectorProducts | None,
        n: int,
        foreach: bool,
        stats: SquaredNorms,
    ) -> None:
        h, wd = group["lr"], group["weight_decay"]
        corrected = hessian_vector is not None
        # h·scale·C_n/W_n: the twin's factor is the memory's penalty coefficient (memexp.optim.memory).
        factor = penalty_coefficient(MemoryFamily.lion, group, n) if corrected else 0.0
        # θ·g at the step's starting point, before the update below moves θ (the decay's penalty term).
        theta_dot_gradient = global_dot(params, grads) if corrected and wd != 0 else 0.0
        if foreach:
            if hessian_vector is not None:
                # g + factor·H·v straight from the finite difference's parts (one pass), then its sign in place.
                directions = hessian_vector.gradient_plus(grads, factor)
                torch._foreach_sign_(directions)
            else:
                directions = torch._foreach_sign(grads)
            if wd != 0:
                torch._foreach_mul_(params, 1 - h * wd)
            torch._foreach_add_(params, directions, alpha=-h)
        else:
            products = None if hessian_vector is None else hessian_vector.materialize_()
            directions = []
            for index, (param, grad) in enumerate(zip(params, grads)):
                direction = grad.add(products[index], alpha=factor).sign_() if products is not None else grad.sign()
                if wd != 0:
                    param.mul_(1 - h * wd)
                param.add_(direction, alpha=-h)
                directions.append(direction)
        stats.add_norm("gradient", 1.0, grads)
        if hessian_vector is not None:
            # The statistics are read at log steps only: H·v and the flips are formed then, not every step.
            products = lazy_tensors(hessian_vector.materialize_)
            stats.add_norm("correction", factor, products)
            stats.add_dot("cosine", factor, grads, products)
            stats.add_mean("flips", lazy_tensors(lambda: [d != g.sign() for d, g in zip(directions, grads)]))
            loss = 0.0 if stats.loss is None else stats.loss
            stats.add_term(
                "penalty",
                lambda: implicit_penalty(MemoryFamily.lion, factor, global_l1(grads), theta_dot_gradient, wd, loss),
            )
        self._decay_groups.append((wd, params))

    def step(self, closure: Any = None) -> Tensor | None:
        self._decay_groups = []
        return super().step(closure)

    def _recipes(self, stats: SquaredNorms) -> dict[str, Any]:
        tiny = torch.finfo(torch.float32).tiny
        gradient, correction = (lambda: stats.norm("gradient")), (lambda: stats.norm("correction"))
        recipes: dict[str, Any] = {
            "correction_norm": correction,
            "correction_ratio": lambda: correction() / gradient().clamp_min(tiny),
            "correction_cosine": lambda: stats.dot("cosine") / (gradient() * correction()).clamp_min(tiny),
            "sign_flip_fraction": lambda: stats.mean("flips"),
            "implicit_penalty": lambda: stats.total("penalty"),
        }
        recipes.update(constraint_stats(self._decay_groups))
        return recipes


LION_MEMORYLESS_INFO = register_optimizer(
    OptimizerInfo(
        name="lion_memoryless",
        optimizer_class=MemorylessLion,
        config=LionMemorylessConfig,
        memory=MemoryFamily.lion,
        decoupled_decay=True,
        needs_closure=True,
        needs_hvp=True,
        twin_of="lion",
    )
)
