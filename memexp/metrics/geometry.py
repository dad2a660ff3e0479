"""Metrics that need no curvature: gradient norms, weight norms, update-to-weight ratio and Lion's
box constraint. Pure functions of tensors; per-tensor values under ``geom/<metric>/<param name>``."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gradient_norms(gradient: Tensor) -> dict[str, float]:
    """|grad L|_2^2 and |grad L|_1 of the full probe-set loss (flat gradient), float64 sums."""
    l2sq, l1 = torch.stack([gradient.pow(2).sum(dtype=torch.float64), gradient.abs().sum(dtype=torch.float64)]).tolist()
    return {"geom/grad_l2sq": l2sq, "geom/grad_l1": l1}


def _squared_norms(tensors: list[Tensor]) -> list[float]:
    """|t|_2^2 of each tensor, accumulated in float64, with ONE host transfer (on a GPU a float() per
    tensor would be a sync per tensor)."""
    if not tensors:
        return []
    return torch.stack([t.detach().pow(2).sum(dtype=torch.float64) for t in tensors]).tolist()


def weight_norms(names: list[str], params: list[Tensor]) -> dict[str, float]:
    squares = _squared_norms(params)
    out = {"geom/weight_norm": math.sqrt(sum(squares))}
    out.update({f"geom/weight_norm/{name}": math.sqrt(sq) for name, sq in zip(names, squares)})
    return out


def update_ratios(names: list[str], params: list[Tensor], before: list[Tensor]) -> dict[str, float]:
    """|x_after - x_before| / |x_before| per tensor and overall (2-norms); inf for a zero tensor
    that moved, 0 for one that did not."""
    deltas = _squared_norms([param.detach() - old for param, old in zip(params, before)])
    norms = _squared_norms(before)
    out = {"geom/update_ratio": _ratio(sum(deltas), sum(norms))}
    out.update({f"geom/update_ratio/{name}": _ratio(d, n) for name, d, n in zip(names, deltas, norms)})
    return out


def _ratio(delta_sq: float, norm_sq: float) -> float:
    if norm_sq == 0:
        return 0.0 if delta_sq == 0 else math.inf
    return math.sqrt(delta_sq / norm_sq)


SATURATION_LEVEL = 0.99


def lion_constraint(names: list[str], params: list[Tensor], decay: list[float]) -> dict[str, float]:
    """Lion with decoupled weight decay lambda drives |x|_inf <= 1/lambda (Chen et al. 2023).
    For every tensor with lambda > 0: max_i |x_i| lambda and the fraction of coordinates with
    |x_i| lambda > 0.99, per tensor and over all of them. Empty when no tensor is decayed."""
    out: dict[str, float] = {}
    decayed = [(name, param, lam) for name, param, lam in zip(names, params, decay) if lam > 0]
    if not decayed:
        return out
    scaled = [param.detach().abs() * lam for _, param, lam in decayed]
    tops = torch.stack([s.max().double() for s in scaled]).tolist()
    hits = torch.stack([(s > SATURATION_LEVEL).sum() for s in scaled]).tolist()
    for (name, param, _), top, hit in zip(decayed, tops, hits):
        out[f"geom/lion_linf_lambda/{name}"] = top
        out[f"geom/lion_saturation/{name}"] = hit / param.numel()
    out["geom/lion_linf_lambda"] = max(tops)
    out["geom/lion_saturation"] = sum(hits) / sum(param.numel() for _, param, _ in decayed)
    return out


def flat_per_parameter(values: list[float], params: list[Tensor]) -> Tensor:
    """One value per tensor, repeated over its coordinates (flat, in the order of ``params``)."""
    parts = [torch.full((p.numel(),), float(v), device=p.device, dtype=p.dtype) for v, p in zip(values, params)]
    return torch.cat(parts)
