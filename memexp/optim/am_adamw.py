"""Adaptive memory AdamW (Topollai & Choromanska, arXiv 2510.04988), see docs/optimizers.md.

AM-SGD's two-plane proximal step (see am_sgd.py) with Adam's diagonal preconditioner P and
decoupled weight decay λ; only β1 adapts (β2 stays fixed). Per step, per tensor by default:

    v ← β2·v + (1 − β2)·g²
    P = (1 − β_max·Π_{i<t} β_i)·(√(v/(1 − β2^t)) + ε)      # first-moment bias correction from the
                                                           # product of the past adaptive β's
    M = P⁻¹(I + ρP)⁻¹
    β_t = clip( [Δ_t/η − ⟨d − g, g + ρP·d⟩_M − λ⟨x, d − g⟩] / ‖d − g‖²_M, 0, β_max )
    d ← (I + ρP)⁻¹[(1 − β_t)·g + (β_t·I + ρP)·d]
    x ← (1 − ηλ)·x − η·P⁻¹d

d and v start at 0; step 1 uses β = β_max (no previous iterate for Δ). Δ_t (offset="taylor"):
η_{t−1}·⟨g, P⁻¹d + λx⟩. With ρ = 0 and β_t fixed at β_max (``adaptive=False``) this is exactly
torch.optim.AdamW with β1 = β_max, bias correction included.

Where the spec and the one public implementation differ: that implementation multiplies the Δ/η
term by (1 + ηλ); the spec's derivation (the proximal model with decoupled decay, checked by the
brute-force test) has no such factor, so it is left out (the two differ by ηλ ≈ 1e-5 relative).
``offset="carried"`` (UNVERIFIED, scope="global" only) carries the aggregate plane forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memexp.optim.am_sgd import GroupTensors, beta_stats, check_am_args, clip_beta
from memexp.optim.base import Closure, MemexpOptimizer, call_closure, check_argument, check_betas
from memexp.optim.memory import MemoryFamily
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer


@dataclass
class AMAdamWConfig(OptimizerConfig):
    name: str = "am_adamw"
    lr: float = 1e-3
    beta_max: float = 0.89  # 0.9 − 0.1ρ: caps the weight on d, (β + ρ)/(1 + ρ), at 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    rho: float = 0.1
    offset: str = "taylor"
    scope: str = "per_tensor"
    adaptive: bool = True
    foreach: bool | None = None


class AdaptiveMemoryAdamW(MemexpOptimizer):
    """AM-AdamW; ``betas = (β_max, β2)``: the first entry is the cap on the adaptive β1.

    ``last_stats``: ``beta_mean`` / ``beta_min`` / ``beta_max`` over the per-tensor β_t.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = AMAdamWConfig.lr,
        betas: tuple[float, float] = (AMAdamWConfig.beta_max, AMAdamWConfig.beta2),
        eps: float = AMAdamWConfig.eps,
        weight_decay: float = AMAdamWConfig.weight_decay,
        rho: float = AMAdamWConfig.rho,
        *,
        offset: str = AMAdamWConfig.offset,
        scope: str = AMAdamWConfig.scope,
        adaptive: bool = AMAdamWConfig.adaptive,
        foreach: bool | None = None,
    ) -> None:
        check_betas(betas)
        check_am_args(lr, betas[0], rho, weight_decay, offset, scope, beta_key="betas[0]")
        check_argument(eps > 0, "eps", eps, "a number > 0")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, rho=rho, adaptive=adaptive, foreach=foreach
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
        carried = self.offset == "carried"
        anchor = self.state[gathered[0].params[0]]
        plane_gap: Tensor | None = None
        if carried and "memory_plane" in anchor:
            assert loss is not None
            plane_gap = (anchor["memory_plane"] - loss.detach().to(anchor["memory_plane"].dtype)) / gathered[0].lr

        # Numerators and denominators of β per tensor (None on a tensor's first step: β = β_max).
        reductions = [
            self._beta_terms(tensors.group, tensors.params, tensors.grads, tensors.preconditioners)
            for tensors in gathered
        ]
        if self.scope == "global":
            pairs = [pair for group_pairs in reductions for pair in group_pairs if pair is not None]
            if pairs:
                total_num = torch.stack([n for n, _ in pairs]).sum()
                total_den = torch.stack([d for _, d in pairs]).sum()
                if plane_gap is not None:
                    total_num = total_num + plane_gap
                reductions = [[None if pair is None else (total_num, total_den) for pair in rs] for rs in reductions]

        all_betas: list[Tensor] = []
        plane_increment: list[Tensor] = []
        for tensors, pairs in zip(gathered, reductions):
            group, params, grads, directions = tensors.group, tensors.params, tensors.grads, tensors.directions
            beta_max = group["betas"][0]
            betas = []
            for param, pair in zip(params, pairs):
                if pair is None or not group["adaptive"]:
                    betas.append(torch.full((), beta_max, dtype=param.dtype, device=param.device))
                else:
                    betas.append(clip_beta(pair[0], pair[1], beta_max).to(param.dtype))
            if carried:
                aggregates = [g * (1 - b) + d * b for g, d, b in zip(grads, directions, betas)]
                old_params = [p.clone() for p in params]
            update = _adamw_update_foreach if tensors.foreach else _adamw_update_single
            rho, wd = group["rho"], group["weight_decay"]
            update(params, grads, directions, tensors.preconditioners, betas, rho, tensors.lr, wd)
            if carried:
                plane_increment += [(a * (p - old)).sum() for a, p, old in zip(aggregates, params, old_params)]
            for param, beta in zip(params, betas):
                state = self.state[param]
                state["beta_product"].mul_(beta)
                state["step"] += 1
                state["previous_lr"] = tensors.lr
            all_betas += betas
        if carried:
            assert loss is not None
            value = loss.detach().to(all_betas[0].dtype) + torch.stack(plane_increment).sum()
            if plane_gap is not None:
                value = value + all_betas[0] * plane_gap * gathered[0].lr
            anchor["memory_plane"] = value
        self._end_step(beta_stats(all_betas[:1] if self.scope == "global" else all_betas))
        return loss

    def _gather(self, group: dict[str, Any]) -> GroupTensors | None:
        """The group's parameters with a gradient, their gradients, memories and preconditioners
        (which updates v: once per step)."""
        params, grads = self._params_with_grad(group)
        if not params:
            return None
        for param in params:
            state = self.state[param]
            if not state:
                state["step"] = 0
                state["direction"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                # Π of the past β's, in the parameter's dtype so a state_dict reload restores it exactly.
                state["beta_product"] = torch.ones((), dtype=param.dtype, device=param.device)
                state["previous_lr"] = group["lr"]
        directions = [self.state[p]["direction"] for p in params]
        preconditioners = self._preconditioners(group, params, grads)
        return GroupTensors(group, params, grads, directions, self._use_foreach(group, params), preconditioners)

    def _preconditioners(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """Update v and return P per tensor (the bias corrections use the step count t = step + 1)."""
        beta_max, beta2 = group["betas"]
        eps = group["eps"]
        result = []
        for param, grad in zip(params, grads):
            state = self.state[param]
            t = state["step"] + 1
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            first_moment_correction = 1 - beta_max * state["beta_product"]
            precond = state["exp_avg_sq"].div(1 - beta2**t).sqrt_().add_(eps).mul_(first_moment_correction)
            result.append(precond)
        return result

    def _beta_terms(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], precond: list[Tensor]
    ) -> list[tuple[Tensor, Tensor] | None]:
        """(numerator, denominator) of β_t per tensor; None where β is β_max (first step, not adaptive)."""
        if not group["adaptive"]:
            return [None] * len(params)
        lr, wd, rho = group["lr"], group["weight_decay"], group["rho"]
        terms: list[tuple[Tensor, Tensor] | None] = []
        for param, grad, p_diag in zip(params, grads, precond):
            state = self.state[param]
            if state["step"] == 0:
                terms.append(None)
                continue
            direction = state["direction"]
            difference = direction - grad
            metric = p_diag.mul(rho).add_(1.0).mul_(p_diag).reciprocal_()  # M = 1/(P(1 + ρP))
            denominator = (difference * difference * metric).sum()
            inner = (difference * (grad + rho * p_diag * direction) * metric).sum()
            numerator = -inner - wd * (param * difference).sum()
            if self.offset == "taylor" and lr > 0:
                numerator = numerator + state["previous_lr"] / lr * (grad * (direction / p_diag + wd * param)).sum()
            terms.append((numerator, denominator))
        return terms


# -- update kernels: the same numbers per tensor (reference) and multi-tensor (torch._foreach_*) -----


def _adamw_update_single(
    params: list[Tensor],
    grads: list[Tensor],
    directions: list[Tensor],
    preconditioners: list[Tensor],
    betas: list[Tensor],
    rho: float,
    lr: float,
    wd: float,
) -> None:
    """d ← ((1 − β)·g + (ρP + β)·d)/(1 + ρP), x ← (1 − ηλ)·x − η·P⁻¹d."""
    for param, grad, direction, p_diag, beta in zip(params, grads, directions, preconditioners, betas):
        damping = p_diag.mul(rho)
        direction.mul_(damping.add(beta))
        direction.add_(grad.mul(1 - beta))
        direction.div_(damping.add_(1.0))
        if wd != 0:
            param.mul_(1 - lr * wd)
        param.add_(direction.div(p_diag), alpha=-lr)


def _adamw_update_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    directions: list[Tensor],
    preconditioners: list[Tensor],
    betas: list[Tensor],
    rho: float,
    lr: float,
    wd: float,
) -> None:
    damping = torch._foreach_mul(preconditioners, rho)
    mixing = torch._foreach_add(damping, betas)
    torch._foreach_mul_(directions, mixing)
    torch._foreach_add_(directions, torch._foreach_mul(grads, [1 - b for b in betas]))
    torch._foreach_add_(damping, 1.0)
    torch._foreach_div_(directions, damping)
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_add_(params, torch._foreach_div(directions, preconditioners), alpha=-lr)


AM_ADAMW_INFO = register_optimizer(
    OptimizerInfo(
        name="am_adamw",
        optimizer_class=AdaptiveMemoryAdamW,
        config=AMAdamWConfig,
        memory=MemoryFamily.adaptive_memory,
        decoupled_decay=True,
        state_buffers=("direction", "exp_avg_sq"),
        betas=("beta_max", "beta2"),
    )
)
