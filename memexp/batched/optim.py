"""Optimizers on stacked parameters: one functional step per optimizer for a whole population.

Every parameter tensor has a leading member dimension ``[M, ...]``; every hyperparameter is a
float64 tensor of shape ``[M]`` (one value per member), broadcast against that dimension. The
scalar arithmetic (``1 - lr·λ``, bias corrections, step sizes) is done in float64 and cast to the
parameter's dtype once, as the single-run optimizers do with their Python floats, so a member
follows its single run to rounding. The math of each step is its single-run optimizer's:

- ``sgd``: torch.optim.SGD (memexp/optim/sgd.py), torch convention ``buf = μ·buf + (1−d)·g`` with
  ``buf = g`` on the first step, L2 weight decay added to the gradient, Nesterov off;
- ``adamw``: torch.optim.AdamW (memexp/optim/adamw.py), decoupled decay ``x ← x·(1 − η·λ)``, bias
  corrections ``1 − β^t``, ``denom = sqrt(v)/sqrt(1 − β2^t) + ε``;
- ``lion``: memexp.optim.lion.Lion (see its docstring): ``c = β1·m + (1−β1)·g``,
  ``x ← x·(1 − η·λ) − η·sign(c)``, ``m ← β2·m + (1−β2)·g``.

Weight decay applies only to the parameters the single run puts in its decayed group
(memexp.optim.param_groups); the others get λ = 0, as there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# Per-member hyperparameters of each batched optimizer (the config keys that may differ inside a
# population), and the state buffers it keeps per parameter.
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay"),
    "adamw": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "lion": ("lr", "beta1", "beta2", "weight_decay"),
}
STATE_BUFFERS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum_buffer",),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "lion": ("exp_avg",),
}


def per_member(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ([M], float64) cast to ``like``'s dtype and shaped to broadcast over ``like`` ([M, ...])."""
    return values.to(dtype=like.dtype, device=like.device).view(-1, *([1] * (like.ndim - 1)))


def sgd_step(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor],
    decayed: list[bool],
    hyper: dict[str, Tensor],
    lr: Tensor,
    first_step: bool,
) -> None:
    for param, grad, buffer, decays in zip(params, grads, buffers, decayed):
        if decays:
            grad = grad + per_member(hyper["weight_decay"], param) * param
        if first_step:
            buffer.copy_(grad)  # torch starts the buffer at the gradient, undamped
        else:
            buffer.mul_(per_member(hyper["momentum"], param)).add_(per_member(1 - hyper["dampening"], param) * grad)
        param.add_(per_member(-lr, param) * buffer)


def adamw_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    decayed: list[bool],
    hyper: dict[str, Tensor],
    lr: Tensor,
    step: int,
) -> None:
    beta1, beta2 = hyper["beta1"], hyper["beta2"]
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    for param, grad, exp_avg, exp_avg_sq, decays in zip(params, grads, exp_avgs, exp_avg_sqs, decayed):
        if decays:
            param.mul_(per_member(1 - lr * hyper["weight_decay"], param))
        exp_avg.lerp_(grad, per_member(1 - beta1, param))
        exp_avg_sq.mul_(per_member(beta2, param)).addcmul_(per_member(1 - beta2, param) * grad, grad)
        denom = (exp_avg_sq.sqrt() / per_member(bias_correction2_sqrt, param)).add_(per_member(hyper["eps"], param))
        param.add_(per_member(-step_size, param) * (exp_avg / denom))


def lion_step(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    decayed: list[bool],
    hyper: dict[str, Tensor],
    lr: Tensor,
) -> None:
    for param, grad, momentum, decays in zip(params, grads, momenta, decayed):
        direction = torch.lerp(momentum, grad, per_member(1 - hyper["beta1"], param)).sign_()
        if decays:
            param.mul_(per_member(1 - lr * hyper["weight_decay"], param))
        param.add_(per_member(-lr, param) * direction)
        momentum.lerp_(grad, per_member(1 - hyper["beta2"], param))


def clip_grad_norms_(grads: list[Tensor], max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ per member: each member's gradient is scaled by
    ``min(1, max_norm / (‖g_member‖ + 1e-6))``. Returns the norms before clipping, [M]."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(per_member(scale.double(), grad))
    return total


class BatchedOptimizer:
    """The state and the step of one optimizer for a population: ``step(grads, lr)`` updates the
    stacked parameters in place; members listed in ``frozen`` keep their parameters."""

    def __init__(self, name: str, params: dict[str, Tensor], decayed: dict[str, bool], hyper: dict[str, Tensor]):
        if name not in HYPERPARAMETERS:
            raise ValueError(f"no batched optimizer {name!r}")
        self.name, self.params, self.hyper = name, params, hyper
        self.names = list(params)
        self.decayed = [decayed[n] for n in self.names]
        self.steps = 0
        self.state: dict[str, dict[str, Tensor]] = {
            buffer: {n: torch.zeros_like(p) for n, p in params.items()} for buffer in STATE_BUFFERS[name]
        }

    @torch.no_grad()
    def step(self, grads: list[Tensor], lr: Tensor, frozen: Tensor | None = None) -> None:
        """One update; ``lr`` is this step's learning rate per member ([M], float64)."""
        self.steps += 1
        params = [self.params[n] for n in self.names]
        kept = [p[frozen].clone() for p in params] if frozen is not None else []
        buffers = [[self.state[b][n] for n in self.names] for b in STATE_BUFFERS[self.name]]
        steps: dict[str, Callable[[], None]] = {
            "sgd": lambda: sgd_step(params, grads, buffers[0], self.decayed, self.hyper, lr, self.steps == 1),
            "adamw": lambda: adamw_step(params, grads, *buffers, self.decayed, self.hyper, lr, self.steps),
            "lion": lambda: lion_step(params, grads, buffers[0], self.decayed, self.hyper, lr),
        }
        steps[self.name]()
        for param, old in zip(params, kept):
            param[frozen] = old

    def member_state(self, index: int) -> dict[str, Any]:
        """Member ``index``'s slice of the state (for its own checkpoint)."""
        return {
            "steps": self.steps,
            "buffers": {b: {n: t[index].clone() for n, t in s.items()} for b, s in self.state.items()},
        }

    def load_member_state(self, index: int, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for buffer, tensors in state["buffers"].items():
            for name, tensor in tensors.items():
                self.state[buffer][name][index].copy_(tensor)
