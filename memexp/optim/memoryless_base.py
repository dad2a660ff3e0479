"""The step skeleton shared by the memoryless-corrected optimizers (docs/memory_theory.md).

A twin replaces an optimizer's memory by the current iterate and adds the correction h·M(θ), which
needs one Hessian-vector product H·v per step on the step's own mini-batch. The skeleton:

    closure() -> g at θ  ->  each group: the plain direction's ingredients and v
    -> one H·v over *all* parameters (the Hessian couples groups)  ->  each group: the update.

Subclasses provide ``_prepare`` (ingredients and v for one group) and ``_apply`` (the update for
one group, given H·v or ``None`` when the correction is off), each with a per-tensor reference path
and a multi-tensor (foreach) path. Step counts n are per parameter (like torch.optim); the finite-n
coefficients (memexp.optim.memory, shared with the metrics) are evaluated per distinct n.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from memexp.optim.base import Closure, MemexpOptimizer, call_closure, check_argument, global_dot
from memexp.optim.closure_hvp import (
    HessianVectorProducts,
    check_hvp_method,
    first_gradient,
    hessian_vector_product,
    prepare_closure,
)


def check_correction_args(correction_scale: float, hvp: str, hvp_radius: float | None) -> None:
    check_argument(math.isfinite(correction_scale), "correction_scale", correction_scale, "a finite number")
    check_hvp_method(hvp)
    check_argument(hvp_radius is None or hvp_radius > 0, "hvp_radius", hvp_radius, "null or a number > 0")


def buckets_by_step(steps: Sequence[int]) -> dict[int, list[int]]:
    """Indices of the tensors grouped by their step count (normally one bucket)."""
    found: dict[int, list[int]] = {}
    for index, n in enumerate(steps):
        found.setdefault(n, []).append(index)
    return found


Tensors = list[Tensor] | Callable[[], list[Tensor]]


def _resolve(tensors: Tensors) -> list[Tensor]:
    return tensors() if callable(tensors) else tensors


def lazy_tensors(make: Callable[[], list[Tensor]]) -> Callable[[], list[Tensor]]:
    """Tensors a statistic needs that the fused update never forms: built when first read, once."""
    built: list[list[Tensor]] = []

    def get() -> list[Tensor]:
        if not built:
            built.append(make())
        return built[0]

    return get


class SquaredNorms:
    """Lazily summed Σ factor²·‖T‖² and Σ factor·⟨A, B⟩ over (factor, tensors) pieces; the tensors
    may be given as a callable (see ``lazy_tensors``), evaluated only when the statistic is read."""

    def __init__(self) -> None:
        self.norm_pieces: dict[str, list[tuple[float, Tensors]]] = {}
        self.dot_pieces: dict[str, list[tuple[float, Tensors, Tensors]]] = {}
        self.sum_pieces: dict[str, list[tuple[float, list[Tensor], bool]]] = {}
        self.count_pieces: dict[str, list[Tensors]] = {}
        self.term_pieces: dict[str, list[Callable[[], Tensor]]] = {}
        self.loss: Tensor | None = None  # the closure's loss at the step's starting point

    def add_norm(self, name: str, factor: float, tensors: Tensors) -> None:
        self.norm_pieces.setdefault(name, []).append((factor, tensors))

    def add_dot(self, name: str, factor: float, left: Tensors, right: Tensors) -> None:
        self.dot_pieces.setdefault(name, []).append((factor, left, right))

    def add_sum(self, name: str, factor: float, tensors: list[Tensor], absolute: bool = False) -> None:
        self.sum_pieces.setdefault(name, []).append((factor, tensors, absolute))

    def add_term(self, name: str, term: Callable[[], Tensor]) -> None:
        """A lazily computed summand of ``total(name)``."""
        self.term_pieces.setdefault(name, []).append(term)

    def add_mean(self, name: str, tensors: Tensors) -> None:
        self.count_pieces.setdefault(name, []).append(tensors)

    def total(self, name: str) -> Tensor:
        total = [
            factor * torch.stack([(t.abs() if absolute else t).sum() for t in tensors]).sum()
            for factor, tensors, absolute in self.sum_pieces.get(name, [])
        ]
        total += [torch.as_tensor(term()) for term in self.term_pieces.get(name, [])]
        return torch.stack(total).sum() if total else torch.zeros(())

    def mean(self, name: str) -> Tensor:
        tensors = [t for pieces in self.count_pieces.get(name, []) for t in _resolve(pieces)]
        if not tensors:
            return torch.zeros(())
        return torch.stack([t.sum().float() for t in tensors]).sum() / sum(t.numel() for t in tensors)

    def norm(self, name: str) -> Tensor:
        pieces = [(factor, _resolve(tensors)) for factor, tensors in self.norm_pieces.get(name, [])]
        total = [
            (factor**2) * torch.stack(torch._foreach_norm(tensors)).square().sum()
            for factor, tensors in pieces
            if tensors
        ]
        return torch.stack(total).sum().sqrt() if total else torch.zeros(())

    def dot(self, name: str) -> Tensor:
        pieces = [(factor, _resolve(left), _resolve(right)) for factor, left, right in self.dot_pieces.get(name, [])]
        total = [factor * global_dot(left, right) for factor, left, right in pieces if left]
        return torch.stack(total).sum() if total else torch.zeros(())


class MemorylessOptimizer(MemexpOptimizer):
    """Base of MemorylessSGD / MemorylessAdamW / MemorylessLion.

    Group hyperparameters shared by all three: ``correction`` (False: the plain memoryless version,
    memory replaced by the current iterate, no correction), ``correction_scale`` (multiplies h·M).
    Optimizer-wide (one H·v serves all groups): ``hvp`` and ``hvp_radius`` (see memexp.optim.closure_hvp).
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], hvp: str, hvp_radius: float | None) -> None:
        check_correction_args(defaults["correction_scale"], hvp, hvp_radius)
        super().__init__(params, defaults)
        self.hvp = hvp
        self.hvp_radius = hvp_radius

    # -- hooks ------------------------------------------------------------------------------------
    def _group_corrects(self, group: dict[str, Any]) -> bool:
        return bool(group["correction"]) and group["correction_scale"] != 0

    def _prepare(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> tuple[Any, list[Tensor]]:
        raise NotImplementedError

    def _apply(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        context: Any,
        products: HessianVectorProducts | None,
        n: int,
        foreach: bool,
        stats: SquaredNorms,
    ) -> None:
        raise NotImplementedError

    def _recipes(self, stats: SquaredNorms) -> dict[str, Any]:
        plain, correction = (lambda: stats.norm("plain")), (lambda: stats.norm("correction"))
        return {
            "plain_step_norm": plain,
            "correction_norm": correction,
            "correction_ratio": lambda: correction() / plain().clamp_min(torch.finfo(torch.float32).tiny),
            "correction_cosine": lambda: (
                stats.dot("cosine") / (plain() * correction()).clamp_min(torch.finfo(torch.float32).tiny)
            ),
            "implicit_penalty": lambda: stats.total("penalty"),
        }

    # -- the step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor | None:
        self._begin_step()
        all_params = [p for group in self.param_groups for p in group["params"]]
        corrects = any(self._group_corrects(group) for group in self.param_groups)
        if corrects:
            rng = prepare_closure(self.hvp, closure, all_params)
            loss = first_gradient(self.hvp, closure)
        else:
            rng, loss = None, call_closure(closure)
        prepared = []
        for group in self.param_groups:
            params, graph_grads = self._params_with_grad(group)
            if not params:
                continue
            grads = [g.detach() for g in graph_grads]
            foreach = self._use_foreach(group, params)
            context, vectors = self._prepare(group, params, grads, foreach)
            if not self._group_corrects(group):
                vectors = [torch.zeros_like(p) for p in params]  # no correction here: no curvature needed
            prepared.append((group, params, grads, context, vectors, foreach))
        if not prepared:
            return loss
        products: HessianVectorProducts | None = None
        if corrects:
            assert closure is not None
            params_flat = [p for _, params, *_ in prepared for p in params]
            vectors_flat = [v for *_, vectors, _ in prepared for v in vectors]
            products = hessian_vector_product(self.hvp, params_flat, vectors_flat, closure, rng, self.hvp_radius)
        stats = SquaredNorms()
        stats.loss = None if loss is None else loss.detach()
        offset = 0
        for group, params, grads, context, _, foreach in prepared:
            group_products = None
            if products is not None and self._group_corrects(group):
                group_products = products.pick(range(offset, offset + len(params)))
            offset += len(params)
            steps = [self.state[p].get("step", 0) for p in params]
            for n, indices in buckets_by_step(steps).items():
                self._apply(
                    group,
                    _pick(params, indices),
                    _pick(grads, indices),
                    _pick_context(context, indices, len(params)),
                    None if group_products is None else group_products.pick(indices),
                    n,
                    foreach,
                    stats,
                )
            for param in params:
                self.state[param]["step"] = self.state[param].get("step", 0) + 1
        self._end_step(self._recipes(stats))
        return loss


def _pick(items: list[Tensor], indices: list[int]) -> list[Tensor]:
    return items if len(indices) == len(items) else [items[i] for i in indices]


def _pick_context(context: dict[str, list[Tensor]], indices: list[int], total: int) -> dict[str, list[Tensor]]:
    """The context is a dict of per-tensor lists; keep the entries of one step-count bucket."""
    if len(indices) == total:
        return context
    return {key: [values[i] for i in indices] for key, values in context.items()}
