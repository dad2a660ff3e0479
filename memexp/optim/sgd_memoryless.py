"""Memoryless-corrected heavy ball: the twin of ``torch.optim.SGD(lr=h, momentum=β)`` (memoryless.md).

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
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from memexp.errors import require
from memexp.optim.hvp import HVP_METHODS
from memexp.optim.memoryless_base import MemorylessOptimizer, SquaredNorms
from memexp.optim.registry import OPTIMIZERS, OptimizerConfig

# Below this many steps the coefficients are summed term by term: the closed forms subtract
# quantities of size O(n(1−β)) and lose digits when n(1−β) is small (β = 0.999: 1e-8 at n = 2).
DIRECT_SUM_STEPS = 256


@lru_cache(maxsize=4096)
def heavy_ball_coefficients(beta: float, n: int) -> tuple[float, float]:
    """(s_n, c_n); tests check them against the literal double sums in exact rational arithmetic.

    Closed form, with Σ_{b=n−k}^{n−1} s_b = [k − β^{n−k+1}(1 − β^k)/(1 − β)]/(1 − β):
    c_n = [S1 − β^{n+1}/(1−β)·(n − β(1 − β^n)/(1 − β))]/(1 − β), S1 = Σ_{k=1..n} k·β^k.
    """
    if beta == 0.0 or n == 0:
        return 1.0, 0.0
    one_minus = 1.0 - beta
    beta_n = beta**n
    s_n = (1.0 - beta_n * beta) / one_minus
    if n < DIRECT_SUM_STEPS:
        partial_sums = [0.0] * (n + 1)  # partial_sums[j] = s_j
        running, power = 0.0, 1.0
        for j in range(n + 1):
            running += power
            partial_sums[j] = running
            power *= beta
        c_n, window, power = 0.0, 0.0, 1.0
        for k in range(1, n + 1):
            window += partial_sums[n - k]  # Σ_{b=n−k}^{n−1} s_b
            power *= beta
            c_n += power * window
        return s_n, c_n
    first_moment = beta * (1.0 - (n + 1) * beta_n + n * beta_n * beta) / one_minus**2
    c_n = (first_moment - beta_n * beta / one_minus * (n - beta * (1.0 - beta_n) / one_minus)) / one_minus
    return s_n, c_n


class MemorylessSGD(MemorylessOptimizer):
    """Memoryless-corrected twin of ``torch.optim.SGD(lr, momentum, weight_decay)``; no state buffers.

    ``correction=False`` gives the plain memoryless version θ − h·s_n·g. ``hvp``: "forward"
    (default), "central" or "double_backward" (see memexp.optim.hvp).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        *,
        correction: bool = True,
        correction_scale: float = 1.0,
        hvp: str = "forward",
        hvp_radius: float | None = None,
        foreach: bool | None = None,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr={lr} is not allowed: a number >= 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} is not allowed: a number in [0, 1)")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay={weight_decay} is not allowed: a number >= 0")
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
        return {"decayed": decayed}, decayed

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
        s_n, c_n = heavy_ball_coefficients(group["momentum"], n)
        decayed: list[Tensor] = context["decayed"]
        # direction = s_n·g + h·scale·c_n·(H + λI)·g; (H + λI)·g = H·g + λ·g folds into g's coefficient.
        correction_factor = h * scale * c_n
        plain_factor = s_n + (correction_factor * wd if products is not None else 0.0)
        if foreach:
            directions = torch._foreach_mul(decayed, plain_factor)
            if products is not None:
                torch._foreach_add_(directions, products, alpha=correction_factor)
            torch._foreach_add_(params, directions, alpha=-h)
        else:
            for param, g, index in zip(params, decayed, range(len(params))):
                direction = g.mul(plain_factor)
                if products is not None:
                    direction.add_(products[index], alpha=correction_factor)
                param.add_(direction, alpha=-h)
        stats.add_norm("plain", h * s_n, decayed)
        if products is not None:
            curvature = products if wd == 0 else [hv.add(g, alpha=wd) for hv, g in zip(products, decayed)]
            stats.add_norm("correction", h * correction_factor, curvature)
            stats.add_dot("cosine", h * s_n * h * correction_factor, decayed, curvature)
            # ∇(h·c/(2s)·‖g‖²) = h·c/s·H·g: the penalty the corrected step descends (scaled like the step).
            stats.add_dot("penalty", h * scale * c_n / (2 * s_n), decayed, decayed)


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

    def check(self) -> None:
        super().check()
        self.check_beta("momentum", self.momentum)
        check_correction_config(self.correction_scale, self.hvp, self.hvp_radius)


def check_correction_config(correction_scale: float, hvp: str, hvp_radius: float | None) -> None:
    require(
        correction_scale == correction_scale and abs(correction_scale) != float("inf"),
        "correction_scale",
        correction_scale,
        "a finite number",
    )
    require(hvp in HVP_METHODS, "hvp", hvp, f"one of {list(HVP_METHODS)}")
    require(hvp_radius is None or hvp_radius > 0, "hvp_radius", hvp_radius, "null or a number > 0")


@OPTIMIZERS.register("sgd_memoryless", config=SGDMemorylessConfig)
def build_sgd_memoryless(param_groups: list[dict[str, Any]], cfg: SGDMemorylessConfig) -> MemorylessSGD:
    return MemorylessSGD(
        param_groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        correction=cfg.correction,
        correction_scale=cfg.correction_scale,
        hvp=cfg.hvp,
        hvp_radius=cfg.hvp_radius,
        foreach=cfg.foreach,
    )
