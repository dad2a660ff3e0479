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

All of a member's parameters live in one row of a flat ``[M, P]`` tensor (the population keeps its
parameters there, memexp/batched/population.py), so a step is a handful of elementwise passes over
the whole population instead of a few per parameter tensor. The parameters the single run puts in
its weight-decayed group (memexp.optim.param_groups) come first, columns ``[0, D)``; the others get
no decay, as there.
"""

from __future__ import annotations

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
    param: Tensor, grad: Tensor, buffer: Tensor, decayed: int, hyper: dict[str, Tensor], lr: Tensor, first_step: bool
) -> None:
    if decayed:
        grad[:, :decayed].addcmul_(per_member(hyper["weight_decay"], param), param[:, :decayed])
    if first_step:
        buffer.copy_(grad)  # torch starts the buffer at the gradient, undamped
    else:
        buffer.mul_(per_member(hyper["momentum"], param)).addcmul_(per_member(1 - hyper["dampening"], param), grad)
    param.addcmul_(per_member(-lr, param), buffer)


def adamw_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decayed: int,
    hyper: dict[str, Tensor],
    lr: Tensor,
    step: int,
) -> None:
    beta1, beta2 = hyper["beta1"], hyper["beta2"]
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    if decayed:
        param[:, :decayed].mul_(per_member(1 - lr * hyper["weight_decay"], param))
    exp_avg.lerp_(grad, per_member(1 - beta1, param))
    exp_avg_sq.mul_(per_member(beta2, param)).addcmul_(grad * per_member(1 - beta2, param), grad)
    denom = exp_avg_sq.sqrt().div_(per_member(bias_correction2_sqrt, param)).add_(per_member(hyper["eps"], param))
    param.addcmul_(per_member(-step_size, param), exp_avg.div(denom))


def lion_step(
    param: Tensor, grad: Tensor, momentum: Tensor, decayed: int, hyper: dict[str, Tensor], lr: Tensor
) -> None:
    direction = torch.lerp(momentum, grad, per_member(1 - hyper["beta1"], param)).sign_()
    if decayed:
        param[:, :decayed].mul_(per_member(1 - lr * hyper["weight_decay"], param))
    param.addcmul_(per_member(-lr, param), direction)
    momentum.lerp_(grad, per_member(1 - hyper["beta2"], param))


def clip_grad_norms_(grad: Tensor, max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ per member on a flat ``[M, P]`` gradient: each row is scaled by
    ``min(1, max_norm / (‖row‖ + 1e-6))``. Returns the norms before clipping, [M]."""
    total = torch.linalg.vector_norm(grad, dim=1)
    grad.mul_((max_norm / (total + 1e-6)).clamp(max=1.0).unsqueeze(1))
    return total


class BatchedOptimizer:
    """The state and the step of one optimizer for a population whose parameters are the rows of
    ``param`` ([M, P], the first ``decayed`` columns weight-decayed): ``step(grad, lr)`` updates
    them in place; members listed in ``frozen`` keep their parameters."""

    def __init__(self, name: str, param: Tensor, decayed: int, hyper: dict[str, Tensor]) -> None:
        if name not in HYPERPARAMETERS:
            raise ValueError(f"no batched optimizer {name!r}")
        self.name, self.param, self.hyper = name, param, hyper
        # No member decays: skip the decay pass (exact: the single run skips it for λ = 0 too).
        self.decayed = decayed if bool((hyper["weight_decay"] != 0).any()) else 0
        self.steps = 0
        self.state = {buffer: torch.zeros_like(param) for buffer in STATE_BUFFERS[name]}

    @torch.no_grad()
    def step(self, grad: Tensor, lr: Tensor, frozen: Tensor | None = None) -> None:
        """One update; ``lr`` is this step's learning rate per member ([M], float64)."""
        self.steps += 1
        param, hyper, decayed = self.param, self.hyper, self.decayed
        kept = param[frozen].clone() if frozen is not None else None
        buffers = [self.state[b] for b in STATE_BUFFERS[self.name]]
        if self.name == "sgd":
            sgd_step(param, grad, buffers[0], decayed, hyper, lr, self.steps == 1)
        elif self.name == "adamw":
            adamw_step(param, grad, buffers[0], buffers[1], decayed, hyper, lr, self.steps)
        else:
            lion_step(param, grad, buffers[0], decayed, hyper, lr)
        if kept is not None:
            param[frozen] = kept

    def member_state(self, index: int) -> dict[str, Any]:
        """Member ``index``'s slice of the state (for its own checkpoint)."""
        return {"steps": self.steps, "buffers": {b: t[index].clone() for b, t in self.state.items()}}

    def load_member_state(self, index: int, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for buffer, tensor in state["buffers"].items():
            self.state[buffer][index].copy_(tensor)
