"""Memoryless-corrected Lion: the twin of :class:`~memexp.optim.Lion` (memoryless.md).

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
``implicit_penalty`` = h·scale·(C/W)·‖g‖₁, and Lion's constraint statistics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memexp.optim.lion import check_lion_args, constraint_stats
from memexp.optim.memoryless_base import MemorylessOptimizer, SquaredNorms, lag_moment
from memexp.optim.registry import OPTIMIZERS, OptimizerConfig
from memexp.optim.sgd_memoryless import check_correction_config


def lion_lag_ratio(beta1: float, beta2: float, n: int) -> float:
    """C_n/W_n with C_n = β1(1−β2)·Σ_{k=1..n} k·β2^{k−1}, W_n = 1 − β1·β2^n."""
    if n == 0 or beta1 == 0.0:
        return 0.0
    return beta1 * (1.0 - beta2) * lag_moment(beta2, n) / (1.0 - beta1 * beta2**n)


class MemorylessLion(MemorylessOptimizer):
    """Memoryless-corrected twin of :class:`~memexp.optim.Lion` (same argument names); no buffers."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        correction: bool = True,
        correction_scale: float = 1.0,
        hvp: str = "forward",
        hvp_radius: float | None = None,
        foreach: bool | None = None,
    ) -> None:
        check_lion_args(lr, betas, weight_decay)
        if betas[1] >= 1.0:
            raise ValueError(f"betas[1]={betas[1]} is not allowed: a number in [0, 1)")
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
        if foreach:
            vectors = torch._foreach_sign(grads)
            if wd != 0:
                torch._foreach_add_(vectors, params, alpha=wd)
        else:
            vectors = [g.sign() if wd == 0 else g.sign().add_(p, alpha=wd) for g, p in zip(grads, params)]
        return {}, vectors

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
        h, wd, scale = group["lr"], group["weight_decay"], group["correction_scale"]
        beta1, beta2 = group["betas"]
        factor = h * scale * lion_lag_ratio(beta1, beta2, n)
        if foreach:
            arguments = torch._foreach_add(grads, products, alpha=factor) if products is not None else list(grads)
            directions = torch._foreach_sign(arguments)
            if wd != 0:
                torch._foreach_mul_(params, 1 - h * wd)
            torch._foreach_add_(params, directions, alpha=-h)
        else:
            directions = []
            for index, (param, grad) in enumerate(zip(params, grads)):
                argument = grad.add(products[index], alpha=factor) if products is not None else grad
                direction = argument.sign()
                if wd != 0:
                    param.mul_(1 - h * wd)
                param.add_(direction, alpha=-h)
                directions.append(direction)
        stats.add_norm("gradient", 1.0, grads)
        if products is not None:
            stats.add_norm("correction", factor, products)
            stats.add_dot("cosine", factor, grads, products)
            stats.add_mean("flips", [d != g.sign() for d, g in zip(directions, grads)])
            stats.add_sum("penalty", factor, grads, absolute=True)
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

    def check(self) -> None:
        super().check()
        self.check_beta("beta1", self.beta1)
        self.check_beta("beta2", self.beta2)
        check_correction_config(self.correction_scale, self.hvp, self.hvp_radius)


@OPTIMIZERS.register("lion_memoryless", config=LionMemorylessConfig)
def build_lion_memoryless(param_groups: list[dict[str, Any]], cfg: LionMemorylessConfig) -> MemorylessLion:
    return MemorylessLion(
        param_groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
        correction=cfg.correction,
        correction_scale=cfg.correction_scale,
        hvp=cfg.hvp,
        hvp_radius=cfg.hvp_radius,
        foreach=cfg.foreach,
    )
