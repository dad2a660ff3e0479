"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), docs/optimizers.md.

    c = β1·m + (1−β1)·g            # interpolation, used only for the direction
    x ← x·(1 − η·λ) − η·sign(c)     # decoupled decay, then the sign step
    m ← β2·m + (1−β2)·g            # the memory uses β2

One state tensor per parameter (AdamW keeps two). sign(0) = 0 as in torch.sign. With λ > 0 every
coordinate is driven into the box |x_i| ≤ 1/λ (Lion-K view, see lion_k.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memexp.optim.base import Closure, MemexpOptimizer, call_closure, check_argument, check_betas, global_norm
from memexp.optim.memory import MemoryFamily
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer


@dataclass
class LionConfig(OptimizerConfig):
    name: str = "lion"
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.0
    foreach: bool | None = None


def check_lion_args(lr: float, betas: tuple[float, float], weight_decay: float) -> None:
    check_argument(lr >= 0.0, "lr", lr, "a number >= 0")
    check_betas(betas)
    check_argument(weight_decay >= 0.0, "weight_decay", weight_decay, "a number >= 0")


def constraint_stats(groups: list[tuple[float, list[Tensor]]]) -> dict[str, Any]:
    """Lion's implied constraint: max_i |x_i|·λ and the fraction of coordinates with |x_i|·λ > 0.99,
    over the parameters that have weight decay."""
    decayed = [(wd, p) for wd, params in groups if wd > 0 for p in params]
    if not decayed:
        return {}

    def scaled_max() -> Tensor:
        return torch.stack([p.detach().abs().max() * wd for wd, p in decayed]).max()

    def saturated_fraction() -> Tensor:
        count = torch.stack([(p.detach().abs() * wd > 0.99).sum() for wd, p in decayed]).sum()
        return count / sum(p.numel() for _, p in decayed)

    return {"constraint_max": scaled_max, "constraint_saturated_fraction": saturated_fraction}


class Lion(MemexpOptimizer):
    """Lion. ``foreach=None`` uses the multi-tensor path; ``False`` the per-tensor reference path.

    ``last_stats``: ``update_rms`` (root mean square of sign(c): the fraction of non-zero signs,
    square-rooted), and with weight decay ``constraint_max`` = max |x|·λ, ``constraint_saturated_fraction``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = LionConfig.lr,
        betas: tuple[float, float] = (LionConfig.beta1, LionConfig.beta2),
        weight_decay: float = LionConfig.weight_decay,
        *,
        foreach: bool | None = None,
    ) -> None:
        check_lion_args(lr, betas, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach))

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor | None:
        self._begin_step()
        loss = call_closure(closure)
        directions: list[Tensor] = []
        decay_groups: list[tuple[float, list[Tensor]]] = []
        for group in self.param_groups:
            params, grads = self._params_with_grad(group)
            if not params:
                continue
            momenta = self._zero_state(params, "exp_avg")
            beta1, beta2 = group["betas"]
            update = _lion_foreach if self._use_foreach(group, params) else _lion_single
            directions += update(params, grads, momenta, group["lr"], beta1, beta2, group["weight_decay"])
            decay_groups.append((group["weight_decay"], params))
        total = sum(d.numel() for d in directions)
        recipes: dict[str, Any] = {"update_rms": lambda: global_norm(directions) / max(total, 1) ** 0.5}
        recipes.update(constraint_stats(decay_groups))
        self._end_step(recipes)
        return loss


def _lion_single(
    params: list[Tensor], grads: list[Tensor], momenta: list[Tensor], lr: float, beta1: float, beta2: float, wd: float
) -> list[Tensor]:
    directions = []
    for param, grad, momentum in zip(params, grads, momenta):
        direction = torch.lerp(momentum, grad, 1 - beta1).sign_()
        if wd != 0:
            param.mul_(1 - lr * wd)
        param.add_(direction, alpha=-lr)
        momentum.lerp_(grad, 1 - beta2)
        directions.append(direction)
    return directions


def _lion_foreach(
    params: list[Tensor], grads: list[Tensor], momenta: list[Tensor], lr: float, beta1: float, beta2: float, wd: float
) -> list[Tensor]:
    # lerp(m, g, 1−β) = m + (1−β)(g − m) = β·m + (1−β)·g in one pass.
    directions = torch._foreach_lerp(momenta, grads, 1 - beta1)
    torch._foreach_sign_(directions)
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_add_(params, directions, alpha=-lr)
    torch._foreach_lerp_(momenta, grads, 1 - beta2)
    return directions


LION_INFO = register_optimizer(
    OptimizerInfo(
        name="lion",
        optimizer_class=Lion,
        config=LionConfig,
        memory=MemoryFamily.lion,
        decoupled_decay=True,
        state_buffers=("exp_avg",),
    )
)
