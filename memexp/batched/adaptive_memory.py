"""Adaptive memory momentum (``am_sgd``, ``am_adamw``) on stacked parameters: each member's β_t is
its own. AM-AdamW's is memexp.optim.am_adamw.AdaptiveMemoryAdamW's math (see ``am_adamw_step``);
AM-SGD's is memexp.optim.am_sgd.AdaptiveMemorySGD's (see its docstring), with the Taylor offset:

    β_t = clip( [(η_{t−1}/η)·⟨g, d⟩ − ⟨d − g, g + ρd⟩/(1 + ρ)] / (‖d − g‖²/(1 + ρ)), 0, β_max )   (0 when d = g)
    d ← ((β_t + ρ)·d + (1 − β_t)·g)/(1 + ρ),   x ← x − η·d,   d_0 = g_0,

g including the coupled weight decay. Every sum is per member: over all its parameters
(``scope=global``) or over each parameter tensor (``scope=per_tensor``: the column segments of each
member's row). ``adaptive=false`` fixes β_t = β_max. The carried offset needs each member's loss
plane and is refused under the batched launcher (memexp.batched.population.refusal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from memexp.optim.am_sgd import clip_beta

ADAPTIVE_MEMORY_HYPERPARAMETERS = {
    "am_sgd": ("lr", "beta_max", "rho", "weight_decay"),
    "am_adamw": ("lr", "beta_max", "beta2", "eps", "weight_decay", "rho"),
}
BATCHED_OFFSETS = ("taylor",)


# The sizes of the parameter tensors in each [M, n] column block: the segments of a per-tensor sum.
Segments = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class AdaptiveMemorySettings:
    """What a population shares: the scope of β_t's sums and whether β_t adapts."""

    scope: str = "global"
    adaptive: bool = True


def segment_sums(block: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Each member's sum over each column segment of ``block`` ([M, n]) -> [M, len(sizes)]."""
    return torch.stack([part.sum(dim=1) for part in block.split(list(sizes), dim=1)], dim=1)


def member_betas(numerators: list[Tensor], denominators: list[Tensor], per_tensor: bool, beta_max: Tensor) -> Tensor:
    """β_t from the blocks' sums ([M, tensors in the block] each): per tensor, or over each member's
    whole model; clipped as the single runs clip (memexp.optim.am_sgd.clip_beta)."""
    numerator, denominator = torch.cat(numerators, dim=1), torch.cat(denominators, dim=1)
    if not per_tensor:
        numerator, denominator = numerator.sum(dim=1, keepdim=True), denominator.sum(dim=1, keepdim=True)
    return clip_beta(numerator, denominator, beta_max)


def column_values(values: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """A value per member and tensor ([M, len(sizes)]) spread over each tensor's columns ([M, Σ sizes])."""
    return values.repeat_interleave(torch.tensor(sizes, device=values.device), dim=1)


def am_sgd_step(
    params: list[Tensor],
    grads: list[Tensor],
    directions: list[Tensor],
    decayed: int,
    h: dict[str, Tensor],
    first_step: bool,
    settings: AdaptiveMemorySettings,
    segments: Segments,
) -> Tensor:
    """One AM-SGD step of every member on ``[M, n]`` blocks, in place. ``h``: per-member ``[M, 1]``
    scalars ``weight_decay``, ``rho``, ``beta_max``, ``neg_lr`` and ``lr_ratio`` (η_{t−1}/η, 0 where
    η = 0). Returns the step's β_t, ``[M, 1]`` (global) or ``[M, tensors]`` (per tensor)."""
    grads = [g.addcmul(h["weight_decay"], p) if i < decayed else g for i, (p, g) in enumerate(zip(params, grads))]
    if first_step:
        for direction, grad in zip(directions, grads):
            direction.copy_(grad)  # d_0 = g_0
    rho = h["rho"]
    per_tensor = settings.scope == "per_tensor"
    numerators, denominators = [], []
    for index, (grad, direction) in enumerate(zip(grads, directions)):
        if grad.shape[1] == 0:
            continue
        difference = direction - grad
        terms = (difference * difference, difference * torch.addcmul(grad, direction, rho), grad * direction)
        if per_tensor:
            squared, inner, plane = (segment_sums(t, segments[index]) for t in terms)
        else:
            squared, inner, plane = (t.sum(dim=1, keepdim=True) for t in terms)
        numerators.append(-inner / (1 + rho) + h["lr_ratio"] * plane)
        denominators.append(squared / (1 + rho))
    if not settings.adaptive:
        width = sum(len(s) for s in segments) if per_tensor else 1
        betas = h["beta_max"].expand(-1, width)
    else:
        betas = member_betas(numerators, denominators, per_tensor, h["beta_max"])
    start = 0
    for index, (param, grad, direction) in enumerate(zip(params, grads, directions)):
        if param.shape[1] == 0:  # an empty block (no weight-decayed parameter): nothing to update
            continue
        if per_tensor:  # each tensor's β over its columns
            sizes = segments[index]
            beta = column_values(betas[:, start : start + len(sizes)], sizes)
            start += len(sizes)
        else:
            beta = betas
        direction.mul_((beta + rho) / (1 + rho))
        direction.add_(grad * ((1 - beta) / (1 + rho)))
        param.addcmul_(h["neg_lr"], direction)
    return betas


def am_adamw_step(
    params: list[Tensor],
    grads: list[Tensor],
    directions: list[Tensor],
    second_moments: list[Tensor],
    decayed: int,
    h: dict[str, Tensor],
    first_step: bool,
    beta_product: Tensor,
    settings: AdaptiveMemorySettings,
    segments: Segments,
) -> Tensor:
    """One AM-AdamW step of every member on ``[M, n]`` blocks, in place (memexp.optim.am_adamw's
    math, Taylor offset): v ← β2·v + (1 − β2)·g², P = (1 − β_max·Π β)·(√(v/(1 − β2^t)) + ε), β_t from
    the metric M = 1/(P(1 + ρP)) (β_max on the first step), d ← ((1 − β)·g + (ρP + β)·d)/(1 + ρP),
    x ← (1 − ηλ)·x − η·d/P. ``beta_product``: each member's Π of its past β per tensor, ``[M, tensors]``
    (updated here). Returns the step's β_t, ``[M, 1]`` (global) or ``[M, tensors]``."""
    per_tensor = settings.scope == "per_tensor"
    blocks = [(i, sizes) for i, sizes in enumerate(segments) if sizes]  # skip an empty block
    starts = [sum(len(s) for s in segments[:i]) for i in range(len(segments))]
    correction = 1 - h["beta_max"] * beta_product  # the first moment's bias correction, per tensor
    preconditioners: dict[int, Tensor] = {}
    for index, sizes in blocks:
        grad, second = grads[index], second_moments[index]
        second.mul_(h["beta2"]).addcmul_(grad * h["one_minus_beta2"], grad)
        columns = column_values(correction[:, starts[index] : starts[index] + len(sizes)], sizes)
        preconditioners[index] = second.div(h["bias_correction2"]).sqrt_().add_(h["eps"]).mul_(columns)
    tensors = beta_product.shape[1]
    if first_step or not settings.adaptive:
        betas = h["beta_max"].expand(-1, tensors if per_tensor else 1)
    else:
        rho = h["rho"]
        numerators, denominators = [], []
        for index, sizes in blocks:
            param, grad, direction, precond = params[index], grads[index], directions[index], preconditioners[index]
            difference = direction - grad
            metric = precond.mul(rho).add_(1.0).mul_(precond).reciprocal_()  # M = 1/(P(1 + ρP))
            pull = grad + rho * precond * direction
            terms = [difference * difference * metric, difference * pull * metric, grad * (direction / precond)]
            if index < decayed:  # λ⟨x, d − g⟩ and the Taylor plane's λ·x
                terms[2] = grad * (direction / precond + h["weight_decay"] * param)
                terms.append(param * difference)
            sums = [segment_sums(t, sizes) if per_tensor else t.sum(dim=1, keepdim=True) for t in terms]
            numerator = -sums[1] + h["lr_ratio"] * sums[2]
            if index < decayed:
                numerator = numerator - h["weight_decay"] * sums[3]
            numerators.append(numerator)
            denominators.append(sums[0])
        betas = member_betas(numerators, denominators, per_tensor, h["beta_max"])
    for index, sizes in blocks:
        param, grad, direction, precond = params[index], grads[index], directions[index], preconditioners[index]
        beta = column_values(betas[:, starts[index] : starts[index] + len(sizes)], sizes) if per_tensor else betas
        damping = precond.mul(h["rho"])
        direction.mul_(damping.add(beta))
        direction.add_(grad.mul(1 - beta))
        direction.div_(damping.add_(1.0))
        if index < decayed:
            param.mul_(h["decay_factor"])
        param.addcmul_(h["neg_lr"], direction.div(precond))
    beta_product.mul_(betas)  # [M, 1] (global) broadcasts over the tensors
    return betas
