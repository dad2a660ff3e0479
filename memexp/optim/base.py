"""What memexp's own optimizers share: lazy diagnostics, the closure call, and path selection.

``last_stats`` is read by the metrics code after a step. It must cost nothing when nobody reads it,
so a step only stores *how* to compute each number (a zero-argument function over tensors the step
made anyway); the numbers are computed, with one host sync, on the first read and cached. The
references are dropped at the start of the next step, before any new temporaries are allocated, so
keeping them never raises the step's peak memory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

StatFn = Callable[[], Tensor | float]


class OptimizerArgumentError(ValueError):
    """A constructor argument outside its range (a ValueError, as torch.optim raises), naming the
    argument so that the config layer can name the config key: ``optimizer.<key>=... is not allowed``."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


def check_argument(condition: bool, key: str, value: Any, allowed: str) -> None:
    """The one range check of every memexp optimizer's constructor (``betas[0]``-style keys for tuples)."""
    if not condition:
        raise OptimizerArgumentError(key, value, allowed)


def check_betas(betas: tuple[float, float] | list[float]) -> None:
    for index, beta in enumerate(betas):
        check_argument(0.0 <= beta < 1.0, f"betas[{index}]", beta, "a number in [0, 1)")


Closure = Callable[..., Tensor]


class LazyStats:
    """A mapping name -> float whose values are computed on first access."""

    def __init__(self, recipes: dict[str, StatFn]) -> None:
        self._recipes = recipes
        self._values: dict[str, float] | None = None

    def values(self) -> dict[str, float]:
        if self._values is None:
            computed = {name: recipe() for name, recipe in self._recipes.items()}
            tensors = [v for v in computed.values() if isinstance(v, Tensor)]
            # One device->host transfer for all tensor-valued stats together.
            host: list[float] = []
            if tensors:
                device = tensors[0].device
                wide = torch.float32 if device.type == "mps" else torch.float64
                host = torch.stack([t.detach().reshape(()).to(device=device, dtype=wide) for t in tensors]).tolist()
            host_iter = iter(host)
            self._values = {
                name: (next(host_iter) if isinstance(value, Tensor) else float(value))
                for name, value in computed.items()
            }
            self._recipes = {}
        return self._values


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """‖concat(tensors)‖₂ as a 0-d tensor (no host sync)."""
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm(list(tensors))
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def global_l1(tensors: Sequence[Tensor]) -> Tensor:
    """Σ_i ‖tensors_i‖₁ as a 0-d tensor (no host sync)."""
    if not tensors:
        return torch.zeros(())
    return torch.stack([t.abs().sum() for t in tensors]).sum()


def global_dot(left: Sequence[Tensor], right: Sequence[Tensor]) -> Tensor:
    """Σ_i ⟨left_i, right_i⟩ as a 0-d tensor (no host sync); one read pass, no product temporary."""
    if not left:
        return torch.zeros(())
    return torch.stack([torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(left, right)]).sum()


class MemexpOptimizer(torch.optim.Optimizer):
    """Base class: ``last_stats``, the foreach switch and the closure call with gradients enabled."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self._stats: LazyStats | None = None

    @property
    def last_stats(self) -> dict[str, float]:
        """Diagnostics of the latest step (empty before the first). Computed when first read."""
        return {} if self._stats is None else self._stats.values()

    def _begin_step(self) -> None:
        self._stats = None  # drop the previous step's tensors before this step allocates new ones

    def _end_step(self, recipes: dict[str, StatFn]) -> None:
        self._stats = LazyStats(recipes)

    @staticmethod
    def _use_foreach(group: dict[str, Any], params: Sequence[Tensor]) -> bool:
        """``foreach=None`` picks the multi-tensor path (it is also correct on CPU, where torch
        loops internally); ``False`` forces the per-tensor reference path."""
        choice = group.get("foreach")
        if choice is None:
            return not torch.jit.is_scripting() and all(p.dtype.is_floating_point for p in params)
        return bool(choice)

    @staticmethod
    def _params_with_grad(group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError("memexp optimizers do not support sparse gradients")
            params.append(param)
            grads.append(param.grad)
        return params, grads

    def _zero_state(self, params: list[Tensor], name: str) -> list[Tensor]:
        """The state buffer ``name`` of each parameter, created as zeros on first use."""
        buffers = []
        for param in params:
            state = self.state[param]
            if name not in state:
                state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
            buffers.append(state[name])
        return buffers


def training_closure(
    optimizer: torch.optim.Optimizer,
    forward: Callable[[Tensor], Tensor],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch: Callable[[], tuple[Tensor, Tensor]],
    params: Sequence[Tensor],
    grad_clip: float,
    autocast: Callable[[], Any],
) -> Closure:
    """The closure the training loop hands to ``optimizer.step``: zero the gradients, the loss of the
    current ``batch()`` under ``autocast``, backward, clip to ``grad_clip`` (0: off). Optimizers that
    need extra gradients (a Hessian-vector product) call it again themselves; ``create_graph=True``
    keeps the graph for a double-backward product. Used for the run and for its twins alike."""

    def closure(create_graph: bool = False) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        x, y = batch()
        with autocast():
            loss = loss_fn(forward(x), y)
        loss.backward(create_graph=create_graph)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        return loss

    return closure


def call_closure(closure: Closure | None, *, create_graph: bool = False) -> Tensor | None:
    """Run the closure with gradients enabled (``step`` itself runs under ``no_grad``)."""
    if closure is None:
        return None
    with torch.enable_grad():
        if create_graph:
            return closure(create_graph=True)
        return closure()


def closure_accepts_create_graph(closure: Closure) -> bool:
    try:
        signature = inspect.signature(closure)
    except (TypeError, ValueError):
        return False
    return "create_graph" in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
