"""In-place Hessian-vector products through the training closure, from inside ``step(closure)``: what
the memoryless-corrected optimizers use (the probe-set metrics have their own, functional ones).

Three methods (constructor argument ``hvp=``):

- ``"forward"`` (default): H·v ≈ (∇L(θ + r·v̂) − ∇L(θ))·‖v‖/r, one extra closure call. It works for
  every model, fused attention (flash / memory-efficient SDPA, which has no double backward)
  included, and keeps a corrected step at about 2x a plain one. Its O(r) error is harmless: the
  correction it feeds is itself an O(h) term.
- ``"central"``: (∇L(θ + r·v̂) − ∇L(θ − r·v̂))·‖v‖/(2r), two extra calls, O(r²) error.
- ``"double_backward"``: H·v = ∇⟨∇L, v⟩ with ``create_graph=True``; exact, one call, but the model
  must support double backward and the closure must accept ``create_graph`` (memexp's does).

The finite differences call the closure at perturbed parameters: each parameter's storage is
swapped for θ + r·v̂ and swapped back afterwards (adding and subtracting r·v̂ would not be exact in
floating point; the swap restores θ bit for bit at no cost), the original ``.grad`` tensors are put
back, and the random number generators are rewound so that the perturbed pass draws the *same*
dropout masks as the real one (a different mask would make the difference O(1) instead of O(r)) and
the training run's random stream is as if the closure had run once. One thing a closure call changes
that an optimizer cannot undo: BatchNorm running statistics get one extra (almost identical) update
per extra call.

The radius: r = rel·max(‖θ‖, 1) with rel = eps^(1/2) (forward) or eps^(1/3) (central) of the
parameter dtype, the classic balance of truncation and round-off error; ``hvp_radius`` overrides rel.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from memexp.optim.base import (
    Closure,
    call_closure,
    check_argument,
    closure_accepts_create_graph,
    global_dot,
    global_norm,
)

HVP_METHODS = ("forward", "central", "double_backward")


class RNGSnapshot:
    """The CPU generator's state and that of every CUDA device the parameters live on."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.cpu = torch.get_rng_state()
        devices = {p.device for p in params if p.device.type == "cuda"}
        self.cuda = {device: torch.cuda.get_rng_state(device) for device in devices}

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda.items():
            torch.cuda.set_rng_state(state, device)


def check_hvp_method(method: str) -> None:
    check_argument(method in HVP_METHODS, "hvp", method, f"one of {list(HVP_METHODS)}")


def prepare_closure(method: str, closure: Closure | None, params: Sequence[Tensor]) -> RNGSnapshot | None:
    """Check the closure suits the method; for finite differences, snapshot the RNG *before* the
    first closure call so the perturbed call can replay it."""
    if closure is None:
        raise RuntimeError("this optimizer needs a Hessian-vector product: call step(closure)")
    if method == "double_backward":
        if not closure_accepts_create_graph(closure):
            raise RuntimeError(
                "hvp='double_backward' needs a closure accepting create_graph=True (it must call "
                "loss.backward(create_graph=create_graph)); use hvp='forward' otherwise"
            )
        return None
    return RNGSnapshot(params)


def first_gradient(method: str, closure: Closure | None) -> Tensor | None:
    if method != "double_backward":
        return call_closure(closure)
    with warnings.catch_warnings():
        # torch warns that backward(create_graph=True) ties .grad to the graph; hessian_vector_product
        # replaces every .grad by its detached value, which breaks that cycle.
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        return call_closure(closure, create_graph=True)


class HessianVectorProducts:
    """H·v per tensor in the form its method produced it: H·v = (ends − starts)·scale.

    A forward difference leaves ends = ∇L(θ + s·v), starts = ∇L(θ) (the step's gradients) and
    scale = 1/s, a 0-d tensor (no host sync), or one scale per member of a population (``[M, 1]``,
    broadcast over each ``[M, n]`` tensor: memexp.batched.memoryless); the exact and central methods
    leave the products themselves (starts and scale None). Keeping the parts lets a consumer that
    needs only g + c·H·v (Lion's twin) form it in one lerp pass instead of a subtraction, a division
    and an addition; the others call ``materialize_``. Views made by ``pick`` share the tensors: each
    tensor belongs to one view, which materializes it once.
    """

    def __init__(self, ends: list[Tensor], starts: list[Tensor] | None = None, scale: Tensor | None = None) -> None:
        self.ends, self.starts, self.scale = ends, starts, scale

    def __len__(self) -> int:
        return len(self.ends)

    def pick(self, indices: Sequence[int]) -> HessianVectorProducts:
        if len(indices) == len(self.ends) and list(indices) == list(range(len(self.ends))):
            return self
        starts = None if self.starts is None else [self.starts[i] for i in indices]
        return HessianVectorProducts([self.ends[i] for i in indices], starts, self.scale)

    def materialize_(self) -> list[Tensor]:
        """The products H·v, formed in place in ``ends`` (fresh tensors of this step) on first call."""
        if self.starts is not None:
            assert self.scale is not None
            torch._foreach_sub_(self.ends, self.starts)
            if self.scale.dim() == 0:
                torch._foreach_mul_(self.ends, self.scale)
            else:  # a scale per member: the foreach kernels take 0-d tensors only
                for end in self.ends:
                    end.mul_(self.scale)
            self.starts = self.scale = None
        return self.ends

    def gradient_plus(self, gradients: list[Tensor], factor: float | Tensor) -> list[Tensor]:
        """New tensors g + factor·H·v (``factor``: a number, or a tensor that broadcasts like the
        scale). When ``gradients`` are this forward difference's starts,
        g + factor·(g' − g)·scale = lerp(g, g', factor·scale): one pass."""
        if self.starts is not None and all(a is b for a, b in zip(self.starts, gradients, strict=True)):
            weight = factor * self.scale
            if weight.dim() == 0:
                return torch._foreach_lerp(gradients, self.ends, weight)
            return [torch.lerp(g, end, weight) for g, end in zip(gradients, self.ends)]
        products = self.materialize_()
        if isinstance(factor, Tensor):
            return [torch.addcmul(g, factor, hv) for g, hv in zip(gradients, products)]
        return torch._foreach_add(gradients, products, alpha=factor)


def relative_radius(dtype: torch.dtype, central: bool, radius: float | None) -> float:
    """rel of the finite difference's radius r = rel·max(‖θ‖, 1): ``radius`` (``hvp_radius``) if
    given, else eps^(1/2) (forward) or eps^(1/3) (central) of the parameter dtype."""
    return radius if radius is not None else torch.finfo(dtype).eps ** (1 / 3 if central else 1 / 2)


def perturbation_scale(param_norm: Tensor, vector_norm: Tensor, relative: float) -> Tensor:
    """s with ‖s·v‖ = r = rel·max(‖θ‖, 1): the perturbation θ + s·v of a finite difference. Elementwise
    in the norms: 0-d for one run, one per member ``[M]`` for a population."""
    return param_norm.clamp_min(1.0) * relative / vector_norm.clamp_min(torch.finfo(vector_norm.dtype).tiny)


def _gradients_at(
    params: list[Tensor],
    vectors: list[Tensor],
    scale: Tensor,
    saved_grads: list[Tensor],
    closure: Closure,
    rng: RNGSnapshot,
) -> list[Tensor]:
    """∇L at θ + scale·v. The parameters' storage is swapped for a perturbed copy and swapped back
    afterwards: θ is restored bit for bit with no backup copy and no copy back (one pass, not three)."""
    originals = [p.data for p in params]
    # scale is a 0-d tensor (no host sync); the new tensors hold θ + scale·v.
    for param, perturbed in zip(params, torch._foreach_addcmul(originals, vectors, [scale] * len(params))):
        param.data = perturbed
    for param in params:
        param.grad = None
    rng.restore()
    try:
        call_closure(closure)
        # Fresh tensors: the caller forms the difference in them in place. (A closure that hands back
        # tensors it keeps, e.g. precomputed gradients, gets copies.)
        kept = {id(g) for g in saved_grads}
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        return [g.clone() if id(g) in kept else g for g in grads]
    finally:
        for param, original in zip(params, originals):
            param.data = original


def hessian_vector_product(
    method: str,
    params: Sequence[Tensor],
    vectors: Sequence[Tensor],
    closure: Closure,
    rng: RNGSnapshot | None,
    radius: float | None = None,
) -> HessianVectorProducts:
    """H·v over all ``params`` together (H couples them), at the point where the closure was just
    evaluated. On entry ``p.grad`` holds ∇L(θ) (with its graph for ``double_backward``); on exit
    every ``p.grad`` is the same detached gradient, parameters and RNG are as on entry."""
    params, vectors = list(params), [v.detach() for v in vectors]
    if method == "double_backward":
        with torch.enable_grad():
            graph_grads = [p.grad for p in params]
            if not any(g is not None and g.requires_grad for g in graph_grads):
                raise RuntimeError("hvp='double_backward': the closure's gradients carry no graph")
            dot = global_dot([g for g in graph_grads], vectors)
            products = torch.autograd.grad(dot, params, allow_unused=True)
        for param in params:
            param.grad = param.grad.detach()
        exact = [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, products)]
        return HessianVectorProducts(exact)

    assert rng is not None
    with torch.no_grad():
        return _finite_difference(params, vectors, closure, rng, method == "central", radius)


def _finite_difference(
    params: list[Tensor],
    vectors: list[Tensor],
    closure: Closure,
    rng: RNGSnapshot,
    central: bool,
    radius: float | None,
) -> HessianVectorProducts:
    relative = relative_radius(params[0].dtype, central, radius)
    # All scalars stay tensors: no host sync inside the step.
    scale = perturbation_scale(global_norm(params), global_norm(vectors), relative).to(params[0].device)
    saved_grads = [p.grad for p in params]
    after = RNGSnapshot(params)
    try:
        plus = _gradients_at(params, vectors, scale, saved_grads, closure, rng)
        if central:
            minus = _gradients_at(params, vectors, -scale, saved_grads, closure, rng)
    finally:
        for param, grad in zip(params, saved_grads):
            param.grad = grad
        after.restore()
    if central:
        torch._foreach_sub_(plus, minus)
        torch._foreach_mul_(plus, 0.5 / scale)
        return HessianVectorProducts(plus)
    return HessianVectorProducts(plus, saved_grads, scale.reciprocal())
