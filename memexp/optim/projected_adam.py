"""Projected Adam onto Lion's box (docs/optimizers.md): the reference method for "does Lion with
decoupled decay λ reach the optimum of min f(x) s.t. ‖x‖∞ ≤ 1/λ?" (Chen, Liu, Liang & Liu 2023).

Per step, with g the gradient, t the step count and r = 1/λ the box's radius:

    m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
    m̂ = m/(1−β1ᵗ),   v̂ = v/(1−β2ᵗ)
    x ← clip(x − η·m̂/(√v̂ + ε), −r, r)          # no weight decay: the loss is f alone

Why clipping is the projection: Adam's step is a gradient step in the metric D = diag(√v̂ + ε), and
the projection onto a box in any diagonal metric, argmin_{|y_i| ≤ r} Σ_i D_ii (y_i − z_i)², separates
into one-dimensional problems whose solution is clip(z_i, −r, r). So this is projected (scaled)
gradient descent for the box-constrained problem, whose fixed points are its KKT points.

``weight_decay`` is λ, not a decay: it names the box by the weight decay of the Lion run being
compared, so that the same parameters get the box that Lion's decoupled decay bounds (memexp's
``no_decay`` split: biases, norm weights and embeddings are unconstrained, as they are undecayed
in Lion). λ = 0: no box (plain Adam). The constructor moves each group's λ to ``box_lambda`` and
sets its ``weight_decay`` to 0, so that nothing reading the groups (the metrics' memory correction)
mistakes the box for a decay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam

from memexp.optim.base import Closure, MemexpOptimizer, call_closure, check_argument, check_betas
from memexp.optim.lion import constraint_stats
from memexp.optim.memory import MemoryFamily
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer


@dataclass
class ProjectedAdamConfig(OptimizerConfig):
    name: str = "projected_adam"
    lr: float = 1e-3
    weight_decay: float = 0.0  # λ of the box |x_i| <= 1/λ (0: no box), not a decay
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    foreach: bool | None = None


def box_radius(box_lambda: float) -> float | None:
    """The box's half-width 1/λ, None for λ = 0 (unconstrained)."""
    return 1.0 / box_lambda if box_lambda > 0 else None


class ProjectedAdam(MemexpOptimizer):
    """Adam followed by the projection onto |x_i| <= 1/λ for the groups with λ > 0.

    ``foreach=None`` uses the multi-tensor path; ``False`` the per-tensor reference path.
    ``last_stats``: with a box, ``constraint_max`` = max |x|·λ (<= 1 after every step) and
    ``constraint_saturated_fraction`` = the fraction of boxed coordinates with |x|·λ > 0.99.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = ProjectedAdamConfig.lr,
        betas: tuple[float, float] = (ProjectedAdamConfig.beta1, ProjectedAdamConfig.beta2),
        weight_decay: float = ProjectedAdamConfig.weight_decay,
        eps: float = ProjectedAdamConfig.eps,
        *,
        foreach: bool | None = None,
    ) -> None:
        check_argument(lr >= 0.0, "lr", lr, "a number >= 0")
        check_betas(betas)
        check_argument(weight_decay >= 0.0, "weight_decay", weight_decay, "a number >= 0 (λ of the box 1/λ; 0: none)")
        check_argument(eps > 0.0, "eps", eps, "a number > 0")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps, foreach=foreach)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "box_lambda" not in group:  # a group restored from a state dict already has it
            box_lambda = float(group["weight_decay"])
            check_argument(box_lambda >= 0.0, "weight_decay", box_lambda, "a number >= 0 (λ of the box 1/λ; 0: none)")
            group["box_lambda"], group["weight_decay"] = box_lambda, 0.0

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor | None:
        self._begin_step()
        loss = call_closure(closure)
        boxed: list[tuple[float, list[Tensor]]] = []
        for group in self.param_groups:
            params, grads = self._params_with_grad(group)
            if not params:
                continue
            firsts = self._zero_state(params, "exp_avg")
            seconds = self._zero_state(params, "exp_avg_sq")
            steps = [self.state[p].setdefault("step", torch.zeros((), dtype=torch.float32)) for p in params]
            beta1, beta2 = group["betas"]
            # The Adam step is torch's own (as memexp's adamw), without decay; only the projection is ours.
            adam(
                params,
                grads,
                firsts,
                seconds,
                [],
                steps,
                foreach=self._use_foreach(group, params),
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=0.0,
                eps=group["eps"],
                maximize=False,
            )
            radius = box_radius(group["box_lambda"])
            if radius is not None:
                _project(params, radius)
                boxed.append((group["box_lambda"], params))
        self._end_step(constraint_stats(boxed))
        return loss


def _project(params: list[Tensor], radius: float) -> None:
    for param in params:
        param.clamp_(-radius, radius)


# The memory is Adam's (the same EMAs and bias corrections), so the metrics' Adam correction applies;
# there is no decay of any kind (the box is a projection), hence decoupled_decay=False with the
# groups' weight_decay set to 0 by the constructor.
PROJECTED_ADAM_INFO = register_optimizer(
    OptimizerInfo(
        name="projected_adam",
        optimizer_class=ProjectedAdam,
        config=ProjectedAdamConfig,
        memory=MemoryFamily.adam,
        decoupled_decay=False,
        state_buffers=("exp_avg", "exp_avg_sq"),
    )
)
