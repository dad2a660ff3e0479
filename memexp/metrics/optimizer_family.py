"""What the metrics need to know about the running optimizer: its description (memexp.optim.registry)
and the state it keeps. The memory theory itself (coefficients, penalty, Hessian-vector direction)
is memexp.optim.memory, shared with the memoryless twins; nothing here guesses from a class name."""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from memexp.optim.memory import MemoryFamily
from memexp.optim.registry import describe


def memory_family(optimizer: torch.optim.Optimizer) -> MemoryFamily | None:
    """The optimizer's declared memory family; None for an optimizer memexp does not know."""
    info = describe(optimizer)
    return None if info is None else info.memory


def decoupled_decay(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's ``weight_decay`` is decoupled (x <- x(1 - lr wd) - ...), the case where
    Lion's dynamics enforce |x|_inf <= 1/wd. torch's SGD and Adam couple it (added to the gradient)."""
    info = describe(optimizer)
    return info is not None and info.decoupled_decay


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
    info = describe(optimizer)
    if info is None or "exp_avg_sq" not in info.state_buffers:
        return None  # no second moment declared: no Adam preconditioner
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
