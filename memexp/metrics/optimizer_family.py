"""What the metrics need to know about the running optimizer, read from the optimizer object itself.

Family, from the class and its param_group keys (no registry name needed, so a hand-built optimizer
works too): ``lion`` (class name contains "Lion", has ``betas``), ``adam`` (``betas``: Adam, AdamW
and their twins), ``heavy_ball`` (``momentum`` > 0: torch SGD), ``sgd`` (``momentum`` = 0: no
memory), ``adaptive_memory`` (exposes adaptive beta_t in ``optimizer.last_stats``), else ``unknown``.

The implicit correction term (memoryless.md; Cattaneo & Shigida) of each family is a penalty
``coef * norm`` added to the loss by the optimizer's memory:

- heavy ball:  coef = h * c_n / (2 s_n),   norm = |grad L|_2^2   (-> h beta / (2 (1-beta)^2))
- Adam/AdamW:  coef = h * (A_n - B_n),     norm = |grad L|_1     (-> h (b1/(1-b1) - b2/(1-b2)))
- Lion:        coef = h * C_n / W_n,       norm = |grad L|_1     (-> h b1 / (1-b2))

with the FINITE-n coefficients the memoryless twins use (n = steps taken so far), which tend to the
spec's asymptotic values. Positive coef: the memory regularizes; negative: it anti-regularizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

FAMILIES = ("heavy_ball", "adam", "lion", "sgd", "adaptive_memory", "unknown")


def optimizer_family(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    name = type(optimizer).__name__.lower()
    if has_adaptive_beta(optimizer):
        return "adaptive_memory"
    if "lion" in name and "betas" in group:
        return "lion"
    if "betas" in group:
        return "adam"
    if "momentum" in group:
        return "heavy_ball" if group["momentum"] > 0 else "sgd"
    return "unknown"


def has_adaptive_beta(optimizer: torch.optim.Optimizer) -> bool:
    # The adaptive-memory optimizers carry `rho` and `adaptive` in their groups from construction on, so
    # they are recognised before their first step too (when `last_stats` is still empty).
    if any("rho" in group and "adaptive" in group for group in optimizer.param_groups):
        return True
    stats = getattr(optimizer, "last_stats", None)
    return isinstance(stats, dict) and any("beta" in str(key) for key in stats)


def decoupled_weight_decay(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> bool:
    """Whether ``group['weight_decay']`` is decoupled (x <- x (1 - lr wd) - ...), the case where
    Lion's dynamics enforce |x|_inf <= 1/wd. torch's SGD and Adam couple it (added to the gradient)."""
    name = type(optimizer).__name__.lower()
    return bool(group.get("decoupled_weight_decay", False)) or "adamw" in name or "lion" in name


# ----------------------------------------------------------------------------------------------
# Finite-n memory coefficients (closed forms of the sums in memoryless.md; n = steps so far).


def _sum_k_beta_k(beta: float, n: int) -> float:
    """sum_{k=1..n} k beta^k."""
    if beta == 0.0:
        return 0.0
    return beta * (1 - (n + 1) * beta**n + n * beta ** (n + 1)) / (1 - beta) ** 2


def heavy_ball_coefficients(beta: float, n: int | None) -> tuple[float, float]:
    """(s_n, c_n) of the heavy-ball twin: s_n = sum_{k<=n} beta^k,
    c_n = sum_{k=1..n} beta^k sum_{b=n-k..n-1} s_b. ``n=None``: the n -> inf limits."""
    if n is None:
        return 1 / (1 - beta), beta / (1 - beta) ** 3
    s_n = (1 - beta ** (n + 1)) / (1 - beta)
    tail = beta ** (n + 1) / (1 - beta) * (n - beta * (1 - beta**n) / (1 - beta))
    return s_n, (_sum_k_beta_k(beta, n) - tail) / (1 - beta)


def adam_memory_length(beta: float, n: int | None) -> float:
    """A_n = sum_k k a_{n,k} with a_{n,k} = (1-beta) beta^k / (1 - beta^{n+1}), k = 0..n
    (the bias-corrected EMA's mean age); -> beta / (1 - beta)."""
    if n is None:
        return beta / (1 - beta)
    if beta == 0.0:
        return 0.0
    return (1 - beta) / (1 - beta ** (n + 1)) * _sum_k_beta_k(beta, n)


def lion_coefficients(beta1: float, beta2: float, n: int | None) -> tuple[float, float]:
    """(W_n, C_n) of Lion's interpolation weights w_0 = 1-b1, w_k = b1 (1-b2) b2^{k-1}:
    W_n = sum w_k = 1 - b1 b2^n, C_n = sum k w_k -> b1 / (1 - b2)."""
    if n is None:
        return 1.0, beta1 / (1 - beta2)
    return 1 - beta1 * beta2**n, beta1 * (1 - (n + 1) * beta2**n + n * beta2 ** (n + 1)) / (1 - beta2)


@dataclass
class GroupCorrection:
    """The correction of one param group: penalty ``coef * norm(grad)``; ``norm`` is "l2sq" or "l1"."""

    coef: float
    norm: str


def group_correction(
    family: str, optimizer: torch.optim.Optimizer, group: dict[str, Any], n: int | None
) -> GroupCorrection | None:
    # A memoryless twin adds the correction explicitly, scaled by its ``correction_scale`` (none when
    # ``correction`` is off): log the penalty it actually applies.
    lr = float(group["lr"]) * float(group.get("correction_scale", 1.0)) * float(group.get("correction", True))
    if family == "heavy_ball":
        beta, dampening = float(group["momentum"]), float(group.get("dampening", 0.0))
        if group.get("nesterov", False) or dampening != 0.0:
            # Nesterov (step weights 1+b, b^2, b^3, ...) and dampening (weights times 1-d) have no
            # finite-n twin in memoryless.md; use the n -> inf penalty h * sum_k k c_k / 2
            # = h (1-d) beta^p / (2 (1-beta)^2), p = 2 for Nesterov, 1 for dampened heavy ball.
            power = 2 if group.get("nesterov", False) else 1
            return GroupCorrection(lr * (1 - dampening) * beta**power / (2 * (1 - beta) ** 2), "l2sq")
        s_n, c_n = heavy_ball_coefficients(beta, n)
        return GroupCorrection(lr * c_n / (2 * s_n), "l2sq")
    if family == "adam":
        beta1, beta2 = (float(b) for b in group["betas"])
        return GroupCorrection(lr * (adam_memory_length(beta1, n) - adam_memory_length(beta2, n)), "l1")
    if family == "lion":
        beta1, beta2 = (float(b) for b in group["betas"])
        w_n, c_n = lion_coefficients(beta1, beta2, n)
        return GroupCorrection(lr * c_n / w_n, "l1")
    if family == "sgd":
        return GroupCorrection(0.0, "l2sq")
    return None


def steps_taken(optimizer: torch.optim.Optimizer, fallback: int | None) -> int | None:
    """The optimizer's own step count where it keeps one (Adam's ``state['step']``), else
    ``fallback`` (the training loop's step)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if step is not None:
                return int(step.item() if isinstance(step, Tensor) else step)
    return fallback


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> Tensor | None:
    """Flat P = 1 / (sqrt(v_hat) + eps) for Adam-type optimizers (bias-corrected second moment),
    in the order of ``params``; None when any parameter has no second-moment state yet."""
    by_param = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    parts = []
    for param in params:
        group, state = by_param.get(id(param)), optimizer.state.get(param, {})
        if group is None or "exp_avg_sq" not in state or "betas" not in group:
            return None
        step = state.get("step", 0)
        step = float(step.item() if isinstance(step, Tensor) else step)
        if step <= 0:
            return None
        beta2 = float(group["betas"][1])
        v_hat = state["exp_avg_sq"].detach().float() / (1 - beta2**step)
        parts.append((1.0 / (v_hat.sqrt() + float(group.get("eps", 1e-8)))).reshape(-1))
    return torch.cat(parts) if parts else None


def adaptive_beta_stats(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``geom/am_beta`` (mean), ``_min``, ``_max`` and per-tensor values from ``optimizer.last_stats``.

    Read defensively: ``beta_mean`` / ``beta_min`` / ``beta_max`` are taken as they are; a ``beta``
    entry may be a number (global scope), a tensor or list (one per tensor), or a dict
    name -> number (per-tensor scope, logged under ``geom/am_beta/<name>``)."""
    stats = getattr(optimizer, "last_stats", None)
    if not isinstance(stats, dict):
        return {}
    out: dict[str, float] = {}
    values: list[float] = []
    raw = stats.get("beta")
    if isinstance(raw, dict):
        for name, value in raw.items():
            number = _as_float_list(value)
            if len(number) == 1:
                out[f"geom/am_beta/{name}"] = number[0]
            values += number
    elif raw is not None:
        values = _as_float_list(raw)
    if values:
        out["geom/am_beta"] = sum(values) / len(values)
        out["geom/am_beta_min"] = min(values)
        out["geom/am_beta_max"] = max(values)
    for suffix in ("mean", "min", "max"):
        value = stats.get(f"beta_{suffix}")
        if value is not None and len(_as_float_list(value)) == 1:
            out["geom/am_beta" if suffix == "mean" else f"geom/am_beta_{suffix}"] = _as_float_list(value)[0]
    return out


def _as_float_list(value: Any) -> list[float]:
    if isinstance(value, Tensor):
        return [float(v) for v in value.detach().flatten().tolist()]
    if isinstance(value, Real):
        return [float(value)]
    if isinstance(value, list | tuple):
        return [float(v) for item in value for v in _as_float_list(item)]
    return []


def sign(value: float) -> float:
    if math.isnan(value):
        return math.nan
    return float((value > 0) - (value < 0))
