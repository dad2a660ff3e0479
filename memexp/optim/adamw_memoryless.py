"""Memoryless-corrected AdamW: the twin of ``torch.optim.AdamW`` (docs/memory_theory.md).

AdamW (torch convention, bias-corrected, decoupled decay λ) with all past gradients equal to the
current g takes the memoryless direction u = g/(|g| + ε), plus λθ. The twin corrects for where the
past iterates really were, with the finite-n lag moments of the bias-corrected EMA weights

    a_{n,k} = (1−β1)β1^k/(1−β1^{n+1}),  A_n = Σ_k k·a_{n,k}   (→ β1/(1−β1));  B_n likewise with β2,

    θ_{n+1} = θ_n − h·( u + λθ + h·(H·w) ⊙ [A_n/(|g|+ε) − B_n·|g|/(|g|+ε)²] ),   w = u + λθ.

A_0 = B_0 = 0, so the first step equals AdamW's. Reading (ε → 0, λ = 0): the step is
diag(1/|g|)·∇[L + h·(A_n − B_n)·‖∇L‖₁]; with β1 < β2 (0.9 < 0.999) the penalty is negative: AdamW's
memory anti-regularizes. ``last_stats['implicit_penalty']`` = h·scale·(A_n − B_n)·(‖g‖₁ + λ(θ·g − L)):
the decoupled decay's part comes from H·λθ = λ∇(θ·∇L − L) (memexp.optim.memory.implicit_penalty).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memexp.optim.adamw import check_adamw_arguments
from memexp.optim.base import global_dot, global_l1
from memexp.optim.closure_hvp import HessianVectorProducts
from memexp.optim.memory import MemoryFamily, adam_lag, implicit_penalty, penalty_coefficient
from memexp.optim.memoryless_base import MemorylessOptimizer, SquaredNorms
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer


@dataclass
class AdamWMemorylessConfig(OptimizerConfig):
    name: str = "adamw_memoryless"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    correction: bool = True
    correction_scale: float = 1.0  # the exact twin; conf/optimizer/adamw_memoryless.yaml uses 1e-3
    hvp: str = "forward"
    hvp_radius: float | None = None
    foreach: bool | None = None


class MemorylessAdamW(MemorylessOptimizer):
    """Memoryless-corrected twin of ``torch.optim.AdamW`` (same argument names); no state buffers."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = AdamWMemorylessConfig.lr,
        betas: tuple[float, float] = (AdamWMemorylessConfig.beta1, AdamWMemorylessConfig.beta2),
        eps: float = AdamWMemorylessConfig.eps,
        weight_decay: float = AdamWMemorylessConfig.weight_decay,
        *,
        correction: bool = AdamWMemorylessConfig.correction,
        correction_scale: float = AdamWMemorylessConfig.correction_scale,
        hvp: str = AdamWMemorylessConfig.hvp,
        hvp_radius: float | None = AdamWMemorylessConfig.hvp_radius,
        foreach: bool | None = None,
    ) -> None:
        check_adamw_arguments(lr, betas, eps, weight_decay)  # a twin accepts what its original does
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            correction=correction,
            correction_scale=correction_scale,
            foreach=foreach,
        )
        super().__init__(params, defaults, hvp, hvp_radius)

    def _prepare(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> tuple[Any, list[Tensor]]:
        eps, wd = group["eps"], group["weight_decay"]
        # v = g/(|g| + ε) + λθ as memexp.optim.memory.hvp_directions forms it (same ops, same numbers),
        # spelled out here to keep |g| + ε: the correction reuses it instead of a second pass.
        if foreach:
            denom = torch._foreach_abs(grads)
            torch._foreach_add_(denom, eps)
            direction = torch._foreach_div(grads, denom)
            if wd != 0:
                torch._foreach_add_(direction, params, alpha=wd)
        else:
            denom = [g.abs().add_(eps) for g in grads]
            direction = [g / d for g, d in zip(grads, denom)]
            if wd != 0:
                direction = [v.add_(p, alpha=wd) for v, p in zip(direction, params)]
        return {"denom": denom, "direction": direction}, direction

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
        products = None if hessian_vector is None else hessian_vector.materialize_()
        h, scale, eps, wd = group["lr"], group["correction_scale"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        # θ·g at the step's starting point, before the update below moves θ (the decay's penalty term).
        theta_dot_gradient = global_dot(params, grads) if products is not None and wd != 0 else 0.0
        lag1, lag2 = adam_lag(beta1, n), adam_lag(beta2, n)
        denom, direction = context["denom"], context["direction"]
        # The correction (H·w) ⊙ [A/(|g|+ε) − B·|g|/(|g|+ε)²] with |g| = denom − ε is
        # (H·w)/denom ⊙ [(A − B) + B·ε/denom]; it is formed in place in the H·w and denom buffers
        # (fresh temporaries of this step): on CPU, new 10M-element buffers cost more than the math.
        # (A fused θ.addcdiv_ variant with one pass fewer measured slower on CPU: kept this one.)
        if foreach:
            if products is not None:
                torch._foreach_reciprocal_(denom)
                torch._foreach_mul_(products, denom)
                torch._foreach_mul_(denom, lag2 * eps)
                torch._foreach_add_(denom, lag1 - lag2)
                torch._foreach_mul_(products, denom)
                torch._foreach_add_(params, products, alpha=-h * h * scale)
            torch._foreach_add_(params, direction, alpha=-h)
        else:
            for index, param in enumerate(params):
                if products is not None:
                    inverse = denom[index].reciprocal_()
                    products[index].mul_(inverse)
                    products[index].mul_(inverse.mul_(lag2 * eps).add_(lag1 - lag2))
                    param.add_(products[index], alpha=-h * h * scale)
                param.add_(direction[index], alpha=-h)
        stats.add_norm("plain", h, direction)
        if products is not None:
            stats.add_norm("correction", h * h * scale, products)
            stats.add_dot("cosine", h * h * h * scale, direction, products)
            coef = penalty_coefficient(MemoryFamily.adam, group, n)
            loss = 0.0 if stats.loss is None else stats.loss
            stats.add_term(
                "penalty",
                lambda: implicit_penalty(MemoryFamily.adam, coef, global_l1(grads), theta_dot_gradient, wd, loss),
            )


ADAMW_MEMORYLESS_INFO = register_optimizer(
    OptimizerInfo(
        name="adamw_memoryless",
        optimizer_class=MemorylessAdamW,
        config=AdamWMemorylessConfig,
        memory=MemoryFamily.adam,
        decoupled_decay=True,
        needs_closure=True,
        needs_hvp=True,
        twin_of="adamw",
    )
)
