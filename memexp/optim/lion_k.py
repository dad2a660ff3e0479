"""Lion-K (Chen, Liu, Liang, Liu 2023, "Lion secretly solves constrained optimization"), see
docs/optimizers.md. Lion with sign replaced by ∇K of a convex kernel K:

    c = β1·m + (1−β1)·g
    x ← x − η·(∇K(c) + λ·x)
    m ← β2·m + (1−β2)·g

With λ > 0 the dynamics solve min_x L(x) + (1/λ)·K*(λx), i.e. a constraint set by K:

| kernel      | ∇K(c)                                                    | implied by λ > 0         |
|-------------|----------------------------------------------------------|--------------------------|
| `l1`        | sign(c)  (this is Lion, bit for bit)                     | ‖x‖∞ ≤ 1/λ               |
| `l2`        | c/‖c‖₂ per tensor (0 at 0)                               | ‖x‖₂ ≤ 1/λ per tensor    |
| `linf`      | sign(c_i) on the argmax coordinate(s) of |c|, split evenly | ‖x‖₁ ≤ 1/λ per tensor  |
| `softsign`  | tanh(c/δ)                                                | ‖x‖∞ ≤ 1/λ (smooth)      |
| `quadratic` | c                                                        | L2 penalty λ/2·‖x‖²      |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from memexp.optim.base import Closure, MemexpOptimizer, call_closure, check_argument, global_norm
from memexp.optim.lion import check_lion_args, constraint_stats
from memexp.optim.memory import MemoryFamily
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer


class LionKernel(Enum):
    l1 = "l1"
    l2 = "l2"
    linf = "linf"
    softsign = "softsign"
    quadratic = "quadratic"


KERNELS = [k.value for k in LionKernel]


@dataclass
class LionKConfig(OptimizerConfig):
    name: str = "lion_k"
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.0
    kernel: LionKernel = LionKernel.l1
    delta: float = 1e-3  # softsign temperature: tanh(c/δ) ≈ sign(c) once |c| ≫ δ
    foreach: bool | None = None


def _l2_tensor(c: Tensor) -> Tensor:
    norm = torch.linalg.vector_norm(c)
    # c/‖c‖, and 0 at c = 0 (c/tiny is then 0/tiny = 0), without a host sync on the norm.
    return c.div_(norm.clamp_min(torch.finfo(c.dtype).tiny))


def _linf_tensor(c: Tensor) -> Tensor:
    magnitude = c.abs()
    largest = magnitude.max()
    on_argmax = (magnitude == largest) & (largest > 0)
    # A subgradient of ‖c‖∞: the sign on the argmax coordinates, split evenly between ties.
    count = on_argmax.sum().clamp_min(1).to(c.dtype)
    return c.sign_().mul_(on_argmax).div_(count)


def apply_kernel_gradient(kernel: str, directions: list[Tensor], delta: float, foreach: bool) -> None:
    """Overwrite each c in ``directions`` with ∇K(c) (per tensor where K is a per-tensor norm)."""
    if kernel == "l1":
        if foreach:
            torch._foreach_sign_(directions)
        else:
            for c in directions:
                c.sign_()
    elif kernel == "l2":
        if foreach:
            norms = torch._foreach_norm(directions)
            torch._foreach_clamp_min_(norms, torch.finfo(directions[0].dtype).tiny)
            torch._foreach_div_(directions, norms)
        else:
            for c in directions:
                _l2_tensor(c)
    elif kernel == "linf":
        for c in directions:  # an argmax per tensor: no multi-tensor op does this
            _linf_tensor(c)
    elif kernel == "softsign":
        if foreach:
            torch._foreach_div_(directions, delta)
            torch._foreach_tanh_(directions)
        else:
            for c in directions:
                c.div_(delta).tanh_()
    else:
        check_argument(kernel == "quadratic", "kernel", kernel, f"one of {KERNELS}")


def constraint_norm_fn(kernel: str) -> Callable[[Tensor], Tensor] | None:
    """The norm that λ bounds by 1 after scaling (max over tensors): ‖x‖∞, ‖x‖₂ or ‖x‖₁."""
    return {
        "l1": lambda x: x.abs().max(),
        "softsign": lambda x: x.abs().max(),
        "l2": lambda x: torch.linalg.vector_norm(x),
        "linf": lambda x: x.abs().sum(),
    }.get(kernel)


class LionK(MemexpOptimizer):
    """Lion-K with a choice of kernel (``l1`` reproduces :class:`~memexp.optim.Lion` bit for bit).

    ``last_stats``: ``update_rms`` (of ∇K(c)); with weight decay, ``constraint_max`` = the largest
    λ·‖x‖ over tensors in the kernel's dual norm (‖·‖∞ for l1/softsign, ‖·‖₂ for l2, ‖·‖₁ for linf;
    ≤ 1 once the constraint holds) and for l1/softsign ``constraint_saturated_fraction``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = LionKConfig.lr,
        betas: tuple[float, float] = (LionKConfig.beta1, LionKConfig.beta2),
        weight_decay: float = LionKConfig.weight_decay,
        kernel: str = LionKConfig.kernel.value,
        delta: float = LionKConfig.delta,
        *,
        foreach: bool | None = None,
    ) -> None:
        check_lion_args(lr, betas, weight_decay)
        check_argument(kernel in KERNELS, "kernel", kernel, f"one of {KERNELS}")
        check_argument(delta > 0, "delta", delta, "a number > 0")
        defaults = dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, kernel=kernel, delta=delta, foreach=foreach
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor | None:
        self._begin_step()
        loss = call_closure(closure)
        all_directions: list[Tensor] = []
        decay_groups: list[tuple[float, list[Tensor], str]] = []
        for group in self.param_groups:
            params, grads = self._params_with_grad(group)
            if not params:
                continue
            momenta = self._zero_state(params, "exp_avg")
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            foreach = self._use_foreach(group, params)
            # Same operations, in the same order, as Lion: kernel l1 must agree bit for bit.
            if foreach:
                directions = torch._foreach_lerp(momenta, grads, 1 - beta1)
            else:
                directions = [torch.lerp(m, g, 1 - beta1) for m, g in zip(momenta, grads)]
            apply_kernel_gradient(group["kernel"], directions, group["delta"], foreach)
            if foreach:
                if wd != 0:
                    torch._foreach_mul_(params, 1 - lr * wd)
                torch._foreach_add_(params, directions, alpha=-lr)
                torch._foreach_lerp_(momenta, grads, 1 - beta2)
            else:
                for param, direction, momentum, grad in zip(params, directions, momenta, grads):
                    if wd != 0:
                        param.mul_(1 - lr * wd)
                    param.add_(direction, alpha=-lr)
                    momentum.lerp_(grad, 1 - beta2)
            all_directions += directions
            decay_groups.append((wd, params, group["kernel"]))
        total = sum(d.numel() for d in all_directions)
        recipes: dict[str, Any] = {"update_rms": lambda: global_norm(all_directions) / max(total, 1) ** 0.5}
        recipes.update(_kernel_constraint_stats(decay_groups))
        self._end_step(recipes)
        return loss


def _kernel_constraint_stats(groups: list[tuple[float, list[Tensor], str]]) -> dict[str, Any]:
    box_groups = [(wd, params) for wd, params, kernel in groups if kernel in ("l1", "softsign")]
    recipes = constraint_stats(box_groups)
    normed = [
        (wd, p, constraint_norm_fn(k)) for wd, params, k in groups if wd > 0 and k in ("l2", "linf") for p in params
    ]
    if normed:
        box_max = recipes.get("constraint_max")

        def scaled_max() -> Tensor:
            values = [fn(p.detach()) * wd for wd, p, fn in normed if fn is not None]
            if box_max is not None:
                values.append(box_max())
            return torch.stack(values).max()

        recipes["constraint_max"] = scaled_max
    return recipes


# The memory is Lion's (same weights, C_n/W_n); its penalty h·C/W·K(∇L) is the ‖∇L‖₁ the metrics
# report only for kernel l1 (docs/memory_theory.md), so the metrics leave the other kernels out.
LION_K_INFO = register_optimizer(
    OptimizerInfo(
        name="lion_k",
        optimizer_class=LionK,
        config=LionKConfig,
        memory=MemoryFamily.lion,
        decoupled_decay=True,
        state_buffers=("exp_avg",),
    )
)
