"""Adaptive memory momentum SGD (Topollai & Choromanska, arXiv 2510.04988), see docs/optimizers.md.

Each step models the loss near x_t by two planes, ℓ_g from the current gradient g and ℓ_d from the
memory direction d, and takes a proximal step on max(ℓ_g, ℓ_d) (with ρ pulling towards the
heavy-ball extrapolation). That gives the momentum β_t in closed form (P = I here):

    β_t = clip( [(1 + ρ)·Δ_t/η − ⟨d − g, g + ρd⟩] / ‖d − g‖², 0, β_max )     (0 when d = g)
    d ← ((β_t + ρ)·d + (1 − β_t)·g)/(1 + ρ),   x ← x − η·d

(EMA form: d is a convex mix, not torch's undampened buffer). Δ_t = L̂_t − L_t is the memory plane's
offset at x_t:
  offset="taylor" (default; the third-party implementation that cites the paper's Algorithms 1 and 3):
      Δ_t ≈ η_{t−1}·⟨g_t, d_t⟩, a first-order estimate of L(x_{t−1}) − L(x_t) along the last step;
      no loss value needed. With ρ = 0: β_t = clip(‖g‖²/‖g − d‖², 0, β_max).
  offset="carried" (UNVERIFIED alternative): the aggregate plane (1 − β)ℓ_g + β·ℓ_d is carried to
      x_{t+1}; Δ_{t+1} = its value there minus the closure's loss L_{t+1}. Needs scope="global".
scope="global" (default for SGD): one β_t from model-wide sums; scope="per_tensor": one per tensor.
d_0 = g_0. Weight decay is coupled (added to g before β_t and d), as in that implementation.
``adaptive=False`` fixes β_t = β_max: constant-momentum EMA SGD, the baseline AM is compared to.

Global scope with several parameter groups: each group's own η, ρ enter its share of the sums,
and β_t is clipped to each group's β_max; the carried offset divides by the first group's η.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from memexp.optim.base import Closure, MemexpOptimizer, call_closure, check_argument
from memexp.optim.memory import MemoryFamily
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer

OFFSETS = ("taylor", "carried")
SCOPES = ("global", "per_tensor")


@dataclass
class AMSGDConfig(OptimizerConfig):
    name: str = "am_sgd"
    lr: float = 0.1
    beta_max: float = 0.9
    rho: float = 0.1
    weight_decay: float = 0.0
    offset: str = "taylor"  # taylor | carried (see the module docstring)
    scope: str = "global"  # global | per_tensor
    adaptive: bool = True
    foreach: bool | None = None


def check_am_args(
    lr: float, beta_max: float, rho: float, weight_decay: float, offset: str, scope: str, beta_key: str = "beta_max"
) -> None:
    check_argument(lr >= 0, "lr", lr, "a number >= 0")
    check_argument(0.0 <= beta_max < 1.0, beta_key, beta_max, "a number in [0, 1)")
    check_argument(rho >= 0, "rho", rho, "a number >= 0")
    check_argument(weight_decay >= 0, "weight_decay", weight_decay, "a number >= 0")
    check_argument(offset in OFFSETS, "offset", offset, f"one of {list(OFFSETS)}")
    check_argument(scope in SCOPES, "scope", scope, f"one of {list(SCOPES)}")
    # The carried plane needs the loss, which is one number: one beta for the whole model.
    check_argument(offset == "taylor" or scope == "global", "offset", offset, "taylor when scope=per_tensor")


def clip_beta(numerator: Tensor, denominator: Tensor, beta_max: float | Tensor) -> Tensor:
    """clip(num/den, 0, β_max), and 0 where den = 0 (then d = g and β does not matter). ``beta_max``
    may be a tensor that broadcasts (one per member of a population: memexp.batched.adaptive_memory)."""
    safe = denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
    clipped = (numerator / safe).clamp_min(0.0).clamp_max(beta_max)
    return torch.where(denominator > 0, clipped, torch.zeros_like(numerator))


def beta_stats(betas: list[Tensor]) -> dict[str, Any]:
    if not betas:
        return {}
    stacked = lambda: torch.stack([b.reshape(()).to(betas[0].dtype) for b in betas])  # noqa: E731
    return {
        "beta_mean": lambda: stacked().mean(),
        "beta_min": lambda: stacked().min(),
        "beta_max": lambda: stacked().max(),
    }


def tensor_sums(tensors: list[Tensor]) -> list[Tensor]:
    return [t.sum() for t in tensors]


class AdaptiveMemorySGD(MemexpOptimizer):
    """AM-SGD. ``last_stats``: ``beta_mean``/``beta_min``/``beta_max`` of the step's β_t (equal for
    scope="global"), and ``memory_offset`` (Δ_t/η summed, the numerator's plane term)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = AMSGDConfig.lr,
        beta_max: float = AMSGDConfig.beta_max,
        rho: float = AMSGDConfig.rho,
        weight_decay: float = AMSGDConfig.weight_decay,
        *,
        offset: str = AMSGDConfig.offset,
        scope: str = AMSGDConfig.scope,
        adaptive: bool = AMSGDConfig.adaptive,
        foreach: bool | None = None,
    ) -> None:
        check_am_args(lr, beta_max, rho, weight_decay, offset, scope)
        defaults = dict(
            lr=lr, beta_max=beta_max, rho=rho, weight_decay=weight_decay, adaptive=adaptive, foreach=foreach
        )
        super().__init__(params, defaults)
        self.offset, self.scope = offset, scope

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor | None:
        self._begin_step()
        if self.offset == "carried" and closure is None:
            raise RuntimeError("offset='carried' needs the loss: call step(closure)")
        loss = call_closure(closure)
        gathered = [tensors for group in self.param_groups if (tensors := self._gather(group)) is not None]
        if not gathered:
            return loss
        taylor, carried = self.offset == "taylor", self.offset == "carried"
        anchor = self.state[gathered[0].params[0]]  # the model-wide memory plane lives with the first parameter
        plane_gap: Tensor | None = None
        if carried and "memory_plane" in anchor:
            assert loss is not None
            plane_gap = (anchor["memory_plane"] - loss.detach().to(anchor["memory_plane"].dtype)) / gathered[0].lr

        # β = [Δ/η − ⟨d−g, g+ρd⟩_M]/‖d−g‖²_M per tensor, M = 1/(1+ρ); taylor: Δ/η = (η_{t−1}/η)·⟨g, d⟩.
        terms: list[tuple[list[Tensor], list[Tensor]]] = []
        for tensors in gathered:
            if not tensors.group["adaptive"]:
                terms.append(([], []))
                continue
            rho, lr = tensors.group["rho"], tensors.lr
            reduce = _sgd_beta_terms_foreach if tensors.foreach else _sgd_beta_terms_single
            squared, inner, plane = reduce(tensors.grads, tensors.directions, rho, taylor)
            numerators = [-i / (1 + rho) for i in inner]
            if plane is not None:
                lr_ratios = [self.state[p]["previous_lr"] / lr if lr > 0 else 0.0 for p in tensors.params]
                numerators = [n + r * s for n, r, s in zip(numerators, lr_ratios, plane)]
            terms.append((numerators, [s / (1 + rho) for s in squared]))
        if self.scope == "global":
            flat_num = [n for numerators, _ in terms for n in numerators]
            flat_den = [d for _, denominators in terms for d in denominators]
            total_num = torch.stack(flat_num).sum() if flat_num else None
            total_den = torch.stack(flat_den).sum() if flat_den else None
            if total_num is not None and plane_gap is not None:
                total_num = total_num + plane_gap

        betas_per_group: list[list[Tensor]] = []
        plane_increment: list[Tensor] = []
        for tensors, (numerators, denominators) in zip(gathered, terms):
            group, params, grads, directions = tensors.group, tensors.params, tensors.grads, tensors.directions
            beta_max, rho, lr = group["beta_max"], group["rho"], tensors.lr
            if not group["adaptive"]:
                reference = directions[0]
                betas = [torch.tensor(beta_max, dtype=reference.dtype, device=reference.device)] * len(params)
            elif self.scope == "global":
                assert total_num is not None and total_den is not None
                betas = [clip_beta(total_num, total_den, beta_max)] * len(params)
            else:
                betas = [clip_beta(n, d, beta_max) for n, d in zip(numerators, denominators)]
            if carried:
                aggregates = [g * (1 - b) + d * b for g, d, b in zip(grads, directions, betas)]
            update = _sgd_update_foreach if tensors.foreach else _sgd_update_single
            update(params, grads, directions, betas, rho, lr)
            if carried:
                # x_{t+1} − x_t = −η·d_{t+1}: the aggregate plane's change along the step.
                plane_increment += [-lr * (a * d).sum() for a, d in zip(aggregates, directions)]
            for param in params:
                self.state[param]["step"] += 1
                self.state[param]["previous_lr"] = lr
            betas_per_group.append(betas)
        if carried:
            assert loss is not None
            value = loss.detach().to(gathered[0].directions[0].dtype) + torch.stack(plane_increment).sum()
            if plane_gap is not None:
                # + β·Δ: the aggregate plane sits β·Δ above L_t at x_t (first group's β).
                value = value + betas_per_group[0][0] * plane_gap * gathered[0].lr
            anchor["memory_plane"] = value
        if self.scope == "global":
            all_betas = [betas[0] for betas in betas_per_group]
        else:
            all_betas = [b for betas in betas_per_group for b in betas]
        self._end_step(beta_stats(all_betas))
        return loss

    def _gather(self, group: dict[str, Any]) -> GroupTensors | None:
        """The group's parameters with a gradient, their (coupled-decayed) gradients and memories."""
        params, grads = self._params_with_grad(group)
        if not params:
            return None
        foreach = self._use_foreach(group, params)
        wd = group["weight_decay"]
        if wd != 0 and foreach:
            grads = torch._foreach_add(grads, params, alpha=wd)
        elif wd != 0:
            grads = [g.add(p, alpha=wd) for g, p in zip(grads, params)]
        directions = []
        for param, grad in zip(params, grads):
            state = self.state[param]
            if "direction" not in state:  # d_0 = g_0
                state["direction"] = grad.clone(memory_format=torch.preserve_format)
                state["step"] = 0
                state["previous_lr"] = group["lr"]
            directions.append(state["direction"])
        return GroupTensors(group, params, grads, directions, foreach)


@dataclass
class GroupTensors:
    """One param group's tensors for a step, gathered once (the shape of torch.optim's steps)."""

    group: dict[str, Any]
    params: list[Tensor]
    grads: list[Tensor]
    directions: list[Tensor]  # the memory d of each parameter (state, updated in place)
    foreach: bool
    preconditioners: list[Tensor] = field(default_factory=list)  # AM-AdamW's diagonal P per tensor

    @property
    def lr(self) -> float:
        return self.group["lr"]


# -- kernels: the same numbers per tensor (reference) and multi-tensor (torch._foreach_*) -----------


def _sgd_beta_terms_single(
    grads: list[Tensor], directions: list[Tensor], rho: float, taylor: bool
) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
    """Per tensor: ‖d − g‖², ⟨d − g, g + ρd⟩ and (taylor) ⟨g, d⟩."""
    differences = [d - g for d, g in zip(directions, grads)]
    squared = [(x * x).sum() for x in differences]
    inner = [(x * g.add(d, alpha=rho)).sum() for x, g, d in zip(differences, grads, directions)]
    plane = [(g * d).sum() for g, d in zip(grads, directions)] if taylor else None
    return squared, inner, plane


def _sgd_beta_terms_foreach(
    grads: list[Tensor], directions: list[Tensor], rho: float, taylor: bool
) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
    differences = torch._foreach_sub(directions, grads)
    squared = tensor_sums(torch._foreach_mul(differences, differences))
    pulls = torch._foreach_add(grads, directions, alpha=rho)
    inner = tensor_sums(torch._foreach_mul(differences, pulls))
    plane = tensor_sums(torch._foreach_mul(grads, directions)) if taylor else None
    return squared, inner, plane


def _sgd_update_single(
    params: list[Tensor], grads: list[Tensor], directions: list[Tensor], betas: list[Tensor], rho: float, lr: float
) -> None:
    """d ← ((β + ρ)·d + (1 − β)·g)/(1 + ρ), x ← x − η·d."""
    for param, grad, direction, beta in zip(params, grads, directions, betas):
        direction.mul_((beta + rho) / (1 + rho))
        direction.add_(grad.mul((1 - beta) / (1 + rho)))
        param.add_(direction, alpha=-lr)


def _sgd_update_foreach(
    params: list[Tensor], grads: list[Tensor], directions: list[Tensor], betas: list[Tensor], rho: float, lr: float
) -> None:
    torch._foreach_mul_(directions, [(b + rho) / (1 + rho) for b in betas])
    torch._foreach_add_(directions, torch._foreach_mul(grads, [(1 - b) / (1 + rho) for b in betas]))
    torch._foreach_add_(params, directions, alpha=-lr)


AM_SGD_INFO = register_optimizer(
    OptimizerInfo(
        name="am_sgd",
        optimizer_class=AdaptiveMemorySGD,
        config=AMSGDConfig,
        memory=MemoryFamily.adaptive_memory,
        decoupled_decay=False,
        state_buffers=("direction",),
    )
)
