"""The memory theory in one module (docs/memory_theory.md): what an optimizer's memory adds to the loss.

An optimizer with memory (heavy ball, Adam/AdamW, Lion) takes steps that depend on past iterates. Its
memoryless-corrected twin replaces every past iterate by the current one and adds a correction of
order h that accounts for where the past iterates really were (Cattaneo & Shigida). Everything the
twins (memexp/optim/*_memoryless.py) and the metrics (``geom/correction*``) need lives here:

- the FINITE-n coefficients (n = steps taken so far) and their n -> inf limits:
  heavy ball s_n, c_n; Adam A_n (one per beta); Lion C_n, W_n;
- the penalty coefficient of each family for one parameter group, and the implicit penalty
  (the term the memory adds to the loss), decoupled weight decay included;
- the vector v the twin multiplies the Hessian with, per family.

Numerics. The closed forms of the sums subtract quantities of size O(n(1-beta)) and lose digits
when n(1-beta) is small (beta = 0.9999, n = 2: c_n off by 8e-5 relative). There the coefficients
come from exact forward recurrences of positive terms (s_n = 1 + beta s_{n-1},
c_n = beta (c_{n-1} + s_{n-1}^2), L_n = L_{n-1} + n beta^{n-1}), advanced once per step and kept per
beta, so a training run pays O(1) per step. Once n(1-beta) >= 40, beta^n < e^-40 and the closed
forms have nothing left to cancel: they are used from there on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor


class MemoryFamily(StrEnum):
    """How an optimizer remembers past gradients; decides its coefficients and its penalty."""

    heavy_ball = "heavy_ball"  # torch SGD's buffer: buf = beta buf + g (beta = 0: no memory)
    adam = "adam"  # bias-corrected EMAs of g and g^2 (Adam, AdamW)
    lion = "lion"  # sign of an interpolation of an EMA with g (Lion, Lion-K)
    adaptive_memory = "adaptive_memory"  # beta_t chosen each step: no constant-beta correction


# n(1 - beta) from which the closed forms are exact to rounding (beta^n < e^-40 ~ 4e-18).
CLOSED_FORM_AGE = 40.0


@dataclass
class _Recurrence:
    """s_n, c_n and L_n = sum_{k=1..n} k beta^(k-1) for one beta, at step n, advanced forward."""

    beta: float
    n: int = 0
    s: float = 1.0
    c: float = 0.0
    lag: float = 0.0
    power: float = 1.0  # beta^n

    def advance_to(self, n: int) -> None:
        while self.n < n:
            beta = self.beta
            self.lag += (self.n + 1) * self.power
            self.c = beta * (self.c + self.s * self.s)
            self.s = 1.0 + beta * self.s
            self.power *= beta
            self.n += 1


_RECURRENCES: dict[float, _Recurrence] = {}


@lru_cache(maxsize=4096)
def _sums(beta: float, n: int) -> tuple[float, float, float]:
    """(s_n, c_n, L_n) of one beta."""
    if beta != 1.0 and n * (1.0 - beta) >= CLOSED_FORM_AGE:
        one_minus, beta_n = 1.0 - beta, beta**n
        s_n = (1.0 - beta_n * beta) / one_minus
        lag = (1.0 - (n + 1) * beta_n + n * beta_n * beta) / one_minus**2
        c_n = (beta * lag - beta_n * beta / one_minus * (n - beta * (1.0 - beta_n) / one_minus)) / one_minus
        return s_n, c_n, lag
    recurrence = _RECURRENCES.get(beta)
    if recurrence is None or recurrence.n > n:  # asked for an earlier step: start again from 0
        recurrence = _RECURRENCES[beta] = _Recurrence(beta)
    recurrence.advance_to(n)
    return recurrence.s, recurrence.c, recurrence.lag


def heavy_ball_coefficients(beta: float, n: int | None) -> tuple[float, float]:
    """(s_n, c_n) of the heavy-ball twin: s_n = sum_{k=0..n} beta^k,
    c_n = sum_{k=1..n} beta^k sum_{b=n-k..n-1} s_b = sum_{b<n} s_b^2 beta^(n-b).
    ``n=None``: the limits 1/(1-beta) and beta/(1-beta)^3."""
    if n is None:
        return 1.0 / (1.0 - beta), beta / (1.0 - beta) ** 3
    s_n, c_n, _ = _sums(beta, n)
    return s_n, c_n


def adam_lag(beta: float, n: int | None) -> float:
    """A_n = sum_{k=0..n} k a_{n,k}, a_{n,k} = (1-beta) beta^k/(1-beta^(n+1)): the mean age of the
    bias-corrected EMA's weights, = beta L_n/s_n; -> beta/(1-beta)."""
    if n is None:
        return beta / (1.0 - beta)
    s_n, _, lag = _sums(beta, n)
    return beta * lag / s_n


def lion_coefficients(beta1: float, beta2: float, n: int | None) -> tuple[float, float]:
    """(W_n, C_n) of Lion's weights w_0 = 1-beta1, w_k = beta1 (1-beta2) beta2^(k-1):
    W_n = sum w_k = 1 - beta1 beta2^n, C_n = sum k w_k = beta1 (1-beta2) L_n(beta2) -> beta1/(1-beta2)."""
    if n is None:
        return 1.0, beta1 / (1.0 - beta2)
    _, _, lag = _sums(beta2, n)
    return 1.0 - beta1 * beta2**n, beta1 * (1.0 - beta2) * lag


def lion_lag_ratio(beta1: float, beta2: float, n: int | None) -> float:
    """C_n/W_n (0 at n = 0: the first step is Lion's)."""
    w_n, c_n = lion_coefficients(beta1, beta2, n)
    return c_n / w_n if c_n else 0.0


# -- the implicit penalty ---------------------------------------------------------------------------

# The norm of the gradient each family's penalty is a multiple of.
PENALTY_NORM = {MemoryFamily.heavy_ball: "l2sq", MemoryFamily.adam: "l1", MemoryFamily.lion: "l1"}


def penalty_coefficient(family: MemoryFamily, group: Mapping[str, Any], n: int | None) -> float | None:
    """The coefficient of one parameter group's implicit penalty at step n; None where the family
    has no constant-beta correction (adaptive memory).

    - heavy ball:  h c_n/(2 s_n)     (-> h beta/(2(1-beta)^2)), times ||g||_2^2
    - Adam/AdamW:  h (A_n - B_n)     (-> h (b1/(1-b1) - b2/(1-b2))), times ||g||_1
    - Lion:        h C_n/W_n         (-> h b1/(1-b2)), times ||g||_1

    A memoryless twin applies the correction scaled by its ``correction_scale`` (and not at all with
    ``correction=False``): the coefficient is the one it applies."""
    lr = float(group["lr"]) * float(group.get("correction_scale", 1.0)) * float(group.get("correction", True))
    if family is MemoryFamily.heavy_ball:
        beta, dampening = float(group.get("momentum", 0.0)), float(group.get("dampening", 0.0))
        if group.get("nesterov", False) or dampening != 0.0:
            # Nesterov (step weights 1+b, b^2, b^3, ...) and dampening (weights times 1-d) have no
            # finite-n twin; use the n -> inf penalty h sum_k k c_k/2 = h (1-d) beta^p/(2(1-beta)^2),
            # p = 2 for Nesterov, 1 for dampened heavy ball.
            power = 2 if group.get("nesterov", False) else 1
            return lr * (1 - dampening) * beta**power / (2 * (1 - beta) ** 2)
        s_n, c_n = heavy_ball_coefficients(beta, n)
        return lr * c_n / (2 * s_n)
    if family is MemoryFamily.adam:
        beta1, beta2 = (float(b) for b in group["betas"])
        return lr * (adam_lag(beta1, n) - adam_lag(beta2, n))
    if family is MemoryFamily.lion:
        beta1, beta2 = (float(b) for b in group["betas"])
        return lr * lion_lag_ratio(beta1, beta2, n)
    return None


def implicit_penalty(
    family: MemoryFamily,
    coefficient: float,
    gradient_norm: Tensor | float,
    theta_dot_gradient: Tensor | float = 0.0,
    decoupled_decay: float = 0.0,
    loss: Tensor | float = 0.0,
) -> Tensor | float:
    """The term one parameter group's memory adds to the loss.

    heavy ball: coef ||g||_2^2 (``gradient_norm`` = ||g||_2^2; coupled decay is already in g).
    Adam and Lion: coef (||g||_1 + lambda (theta.g - L)) with decoupled decay lambda: the twin's
    Hessian product H (u + lambda theta) has H theta = grad(theta.grad L - L). ``theta_dot_gradient``
    and ``gradient_norm`` are over the group's own coordinates; with several groups the decay term is
    the one whose gradient on the group's coordinates is H_GG theta_G (exact for one group)."""
    if family is MemoryFamily.heavy_ball or decoupled_decay == 0:
        return coefficient * gradient_norm
    return coefficient * (gradient_norm + decoupled_decay * (theta_dot_gradient - loss))


def hvp_directions(
    family: MemoryFamily,
    gradients: Sequence[Tensor],
    params: Sequence[Tensor],
    *,
    eps: float | Tensor = 0.0,
    decoupled_decay: float | Tensor = 0.0,
    foreach: bool = False,
) -> list[Tensor]:
    """The vector v of the twin's Hessian product H v, per tensor (new tensors):
    heavy ball v = g (the effective gradient, coupled decay included); Adam v = u + lambda theta,
    u = g/(|g| + eps); Lion v = sign(g) + lambda theta. ``eps`` / ``decoupled_decay`` may be tensors
    (per coordinate) on the per-tensor path; the multi-tensor path takes numbers."""
    gradients, params = list(gradients), list(params)
    if family is MemoryFamily.heavy_ball:
        return torch._foreach_mul(gradients, 1.0) if foreach else [g.clone() for g in gradients]
    if family not in (MemoryFamily.adam, MemoryFamily.lion):
        raise ValueError(f"family={family.value!r} has no Hessian-vector direction")
    decays = not (isinstance(decoupled_decay, float | int) and decoupled_decay == 0)
    if foreach:
        if family is MemoryFamily.adam:
            denominators = torch._foreach_abs(gradients)
            torch._foreach_add_(denominators, eps)
            vectors = torch._foreach_div(gradients, denominators)
        else:
            vectors = torch._foreach_sign(gradients)
        if decays:
            torch._foreach_add_(vectors, params, alpha=decoupled_decay)
        return vectors
    vectors = [g / (g.abs() + eps) if family is MemoryFamily.adam else g.sign() for g in gradients]
    if isinstance(decoupled_decay, Tensor):
        vectors = [v.add_(p * decoupled_decay) for v, p in zip(vectors, params)]
    elif decays:
        vectors = [v.add_(p, alpha=decoupled_decay) for v, p in zip(vectors, params)]
    return vectors


def sign(value: float) -> float:
    """-1, 0 or 1 (nan stays nan): the direction of a penalty coefficient."""
    if math.isnan(value):
        return math.nan
    return float((value > 0) - (value < 0))
