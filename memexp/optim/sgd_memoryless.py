"""Memoryless-corrected heavy ball: the twin of ``torch.optim.SGD(lr=h, momentum=β)`` (docs/memory_theory.md).

torch's convention (no dampening): buf_n = β·buf_{n−1} + g_n, buf_0 = g_0, θ_{n+1} = θ_n − h·buf_n.
The twin keeps no buffer. With the finite-n coefficients

    s_n = Σ_{k=0..n} β^k = (1 − β^{n+1})/(1 − β)
    c_n = Σ_{k=1..n} β^k · Σ_{b=n−k..n−1} s_b

it steps θ_{n+1} = θ_n − h·( s_n·g + h·c_n·H·g ), which stays O(h²) from heavy ball over a fixed
horizon (O(h) without the correction). Modified-loss reading: the step descends
L + h·c_n/(2 s_n)·‖∇L‖² (→ h·β/(2(1−β)²)·‖∇L‖²): memory regularizes. ``last_stats['implicit_penalty']``
is that penalty at the current iterate.

Weight decay is coupled as in torch.optim.SGD: g ← g + λθ, i.e. the loss gains λ/2·‖θ‖², so the
curvature in the correction is H + λI.

Stable ``correction_scale`` at practical learning rates: the correction's size relative to the
plain step is about scale·h·β/(1−β)²·λ_max(H), ≈ 9·scale·λ_max(H) at h = 0.1, β = 0.9. Measured
(docs/optimizers.md, scripts/sweep_correction_scale.py): at h = 0.1 runs diverge for scale ≥ 0.01;
at h = 0.01 the exact twin (scale 1) is stable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memexp.optim.base import global_dot
from memexp.optim.closure_hvp import HessianVectorProducts
from memexp.optim.memory import MemoryFamily, heavy_ball_coefficients, penalty_coefficient
from memexp.optim.memoryless_base import MemorylessOptimizer, SquaredNorms, lazy_tensors
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer
from memexp.optim.sgd import check_sgd_arguments


@dataclass
class SGDMemorylessConfig(OptimizerConfig):
    name: str = "sgd_memoryless"
    lr: float = 0.01  # stable with the exact twin (scale 1); at 0.1 it needs scale <= 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    correction: bool = True
    correction_scale: float = 1.0
    hvp: str = "forward"
    hvp_radius: float | None = None
    foreach: bool | None = None


class MemorylessSGD(MemorylessOptimizer):
    """Memoryless-corrected twin of ``torch.optim.SGD(lr, momentum, weight_decay)``; no state buffers.

    ``correction=False`` gives the plain memoryless version θ − h·s_n·g. ``hvp``: "forward"
    (default), "central" or "double_backward" (see memexp.optim.closure_hvp).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = SGDMemorylessConfig.lr,
        momentum: float = SGDMemorylessConfig.momentum,
        weight_decay: float = SGDMemorylessConfig.weight_decay,
        *,
        correction: bool = SGDMemorylessConfig.correction,
        correction_scale: float = SGDMemorylessConfig.correction_scale,
        hvp: str = SGDMemorylessConfig.hvp,
        hvp_radius: float | None = SGDMemorylessConfig.hvp_radius,
        foreach: bool | None = None,
    ) -> None:
        # A twin accepts what its original does (torch's SGD without dampening or Nesterov).
        check_sgd_arguments(lr, momentum, dampening=0.0, nesterov=False, weight_decay=weight_decay)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            correction=correction,
            correction_scale=correction_scale,
            foreach=foreach,
        )
        super().__init__(params, defaults, hvp, hvp_radius)

    def _group_corrects(self, group: dict[str, Any]) -> bool:
        return super()._group_corrects(group) and group["momentum"] > 0

    def _prepare(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> tuple[Any, list[Tensor]]:
        wd = group["weight_decay"]
        if wd == 0:
            decayed = grads
        elif foreach:
            decayed = torch._foreach_add(grads, params, alpha=wd)
        else:
            decayed = [g.add(p, alpha=wd) for g, p in zip(grads, params)]
        # v = the effective gradient (memexp.optim.memory.hvp_directions' heavy-ball case) without its
        # copy: hessian_vector_product only reads v, and the step never writes the gradients.
        return {"decayed": decayed}, list(decayed)

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
        h, wd, scale = group["lr"], group["weight_decay"], group["correction_scale"]
        s_n, c_n = heavy_ball_coefficients(group["momentum"], n)
        decayed: list[Tensor] = context["decayed"]
        # direction = s_n·g + h·scale·c_n·(H + λI)·g; (H + λI)·g = H·g + λ·g folds into g's coefficient.
        correction_factor = h * scale * c_n
        plain_factor = s_n + (correction_factor * wd if products is not None else 0.0)
        # θ −= h·plain_factor·g + h·correction_factor·H·g: two in-place passes, no direction buffer.
        if foreach:
            torch._foreach_add_(params, decayed, alpha=-h * plain_factor)
            if products is not None:
                torch._foreach_add_(params, products, alpha=-h * correction_factor)
        else:
            for index, param in enumerate(params):
                param.add_(decayed[index], alpha=-h * plain_factor)
                if products is not None:
                    param.add_(products[index], alpha=-h * correction_factor)
        stats.add_norm("plain", h * s_n, decayed)
        if products is not None:
            hessian_products = products
            curvature = (
                hessian_products
                if wd == 0
                else lazy_tensors(lambda: [hv.add(g, alpha=wd) for hv, g in zip(hessian_products, decayed)])
            )
            stats.add_norm("correction", h * correction_factor, curvature)
            stats.add_dot("cosine", h * s_n * h * correction_factor, decayed, curvature)
            # ∇(h·c/(2s)·‖g‖²) = h·c/s·H·g: the penalty the corrected step descends (scaled like the step).
            coefficient = penalty_coefficient(MemoryFamily.heavy_ball, group, n)
            stats.add_term("penalty", lambda: coefficient * global_dot(decayed, decayed))


SGD_MEMORYLESS_INFO = register_optimizer(
    OptimizerInfo(
        name="sgd_memoryless",
        optimizer_class=MemorylessSGD,
        config=SGDMemorylessConfig,
        memory=MemoryFamily.heavy_ball,
        decoupled_decay=False,
        needs_closure=True,
        needs_hvp=True,
        twin_of="sgd",
    )
)
