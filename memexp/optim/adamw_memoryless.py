"""Memoryless-corrected AdamW: the twin of ``torch.optim.AdamW`` (memoryless.md).

AdamW (torch convention, bias-corrected, decoupled decay λ) with all past gradients equal to the
current g takes the memoryless direction u = g/(|g| + ε), plus λθ. The twin corrects for where the
past iterates really were, with the finite-n lag moments of the bias-corrected EMA weights

    a_{n,k} = (1−β1)β1^k/(1−β1^{n+1}),  A_n = Σ_k k·a_{n,k}   (→ β1/(1−β1));  B_n likewise with β2,

    θ_{n+1} = θ_n − h·( u + λθ + h·(H·w) ⊙ [A_n/(|g|+ε) − B_n·|g|/(|g|+ε)²] ),   w = u + λθ.

A_0 = B_0 = 0, so the first step equals AdamW's. Reading (ε → 0, λ = 0): the step is
diag(1/|g|)·∇[L + h·(A_n − B_n)·‖∇L‖₁]; with β1 < β2 (0.9 < 0.999) the penalty is negative: AdamW's
memory anti-regularizes. ``last_stats['implicit_penalty']`` = h·scale·(A_n − B_n)·‖g‖₁.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memexp.errors import require
from memexp.optim.memoryless_base import MemorylessOptimizer, SquaredNorms, lag_moment
from memexp.optim.registry import OPTIMIZERS, OptimizerConfig
from memexp.optim.sgd_memoryless import check_correction_config


def adam_lag(beta: float, n: int) -> float:
    """A_n = Σ_{k=0..n} k·(1−β)β^k/(1−β^{n+1})."""
    if n == 0 or beta == 0.0:
        return 0.0
    return (1.0 - beta) * beta * lag_moment(beta, n) / (1.0 - beta ** (n + 1))


class MemorylessAdamW(MemorylessOptimizer):
    """Memoryless-corrected twin of ``torch.optim.AdamW`` (same argument names); no state buffers."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        correction: bool = True,
        correction_scale: float = 1.0,
        hvp: str = "forward",
        hvp_radius: float | None = None,
        foreach: bool | None = None,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr={lr} is not allowed: a number >= 0")
        for index, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{index}]={beta} is not allowed: a number in [0, 1)")
        if not eps > 0:
            raise ValueError(f"eps={eps} is not allowed: a number > 0")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay={weight_decay} is not allowed: a number >= 0")
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
        if foreach:
            denom = torch._foreach_abs(grads)
            torch._foreach_add_(denom, eps)
            direction = torch._foreach_div(grads, denom)
            if wd != 0:
                torch._foreach_add_(direction, params, alpha=wd)
        else:
            denom = [g.abs().add_(eps) for g in grads]
            direction = [g.div(d) for g, d in zip(grads, denom)]
            if wd != 0:
                for w, p in zip(direction, params):
                    w.add_(p, alpha=wd)
        return {"denom": denom, "direction": direction}, direction

    def _apply(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        context: Any,
        products: list[Tensor] | None,
        n: int,
        foreach: bool,
        stats: SquaredNorms,
    ) -> None:
        h, scale, eps = group["lr"], group["correction_scale"], group["eps"]
        beta1, beta2 = group["betas"]
        lag1, lag2 = adam_lag(beta1, n), adam_lag(beta2, n)
        denom, direction = context["denom"], context["direction"]
        # The correction (H·w) ⊙ [A/(|g|+ε) − B·|g|/(|g|+ε)²] with |g| = denom − ε is
        # (H·w)/denom ⊙ [(A − B) + B·ε/denom]; it is formed in place in the H·w and denom buffers
        # (fresh temporaries of this step): on CPU, new 10M-element buffers cost more than the math.
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
            stats.add_sum("penalty", h * scale * (lag1 - lag2), grads, absolute=True)

    def _recipes(self, stats: SquaredNorms) -> dict[str, Any]:
        recipes = super()._recipes(stats)
        recipes["implicit_penalty"] = lambda: stats.total("penalty")
        return recipes


@dataclass
class AdamWMemorylessConfig(OptimizerConfig):
    name: str = "adamw_memoryless"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    correction: bool = True
    correction_scale: float = 1e-3  # measured stable range at lr=1e-3: <= 3e-3 (docs/optimizers.md)
    hvp: str = "forward"
    hvp_radius: float | None = None
    foreach: bool | None = None

    def check(self) -> None:
        super().check()
        self.check_beta("beta1", self.beta1)
        self.check_beta("beta2", self.beta2)
        require(self.eps > 0, "eps", self.eps, "a number > 0")
        check_correction_config(self.correction_scale, self.hvp, self.hvp_radius)


@OPTIMIZERS.register("adamw_memoryless", config=AdamWMemorylessConfig)
def build_adamw_memoryless(param_groups: list[dict[str, Any]], cfg: AdamWMemorylessConfig) -> MemorylessAdamW:
    return MemorylessAdamW(
        param_groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        correction=cfg.correction,
        correction_scale=cfg.correction_scale,
        hvp=cfg.hvp,
        hvp_radius=cfg.hvp_radius,
        foreach=cfg.foreach,
    )
