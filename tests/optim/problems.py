"""Small float64 test problems with closed-form gradient and Hessian."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class QuarticProblem:
    """L(θ) = ½θᵀAθ + (c/4)·Σθ_i⁴ + bᵀθ on θ ∈ R⁶, held as a 2×2 matrix and a 2-vector (two tensors,
    so multi-tensor code paths are exercised). Smooth, non-quadratic, coupled (A is dense)."""

    dim = 6

    def __init__(self, seed: int = 0, quartic: float = 0.5, scale: float = 1.0, start_scale: float = 1.0) -> None:
        generator = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(self.dim, self.dim, generator=generator, dtype=torch.float64))
        self.a = scale * q @ torch.diag(torch.linspace(0.5, 3.0, self.dim, dtype=torch.float64)) @ q.T
        self.b = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        self.c = quartic
        self.start = start_scale * torch.randn(self.dim, generator=generator, dtype=torch.float64)

    def parameters(self, start: Tensor | None = None) -> list[nn.Parameter]:
        flat = (self.start if start is None else start).clone()
        return [nn.Parameter(flat[:4].reshape(2, 2).clone()), nn.Parameter(flat[4:].clone())]

    @staticmethod
    def flat(params: list[Tensor]) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in params])

    def loss(self, theta: Tensor) -> Tensor:
        return 0.5 * theta @ self.a @ theta + self.c / 4 * (theta**4).sum() + self.b @ theta

    def grad(self, theta: Tensor) -> Tensor:
        return self.a @ theta + self.c * theta**3 + self.b

    def hessian(self, theta: Tensor) -> Tensor:
        return self.a + torch.diag(3 * self.c * theta**2)

    def closure(self, params: list[nn.Parameter]) -> Callable[..., Tensor]:
        def closure(create_graph: bool = False) -> Tensor:
            for p in params:
                p.grad = None
            loss = self.loss(torch.cat([p.reshape(-1) for p in params]))
            loss.backward(create_graph=create_graph)
            return loss

        return closure


def small_mlp(seed: int = 0, dtype: torch.dtype = torch.float64, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 8), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 3)]
    return nn.Sequential(*layers).to(dtype)


def mlp_closure(model: nn.Module, seed: int = 1, batch: int = 16) -> Callable[..., Tensor]:
    """A closure over a fixed regression batch; the batch changes every call count (like training)."""
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 5, generator=generator, dtype=dtype)
    targets = torch.randn(64, 3, generator=generator, dtype=dtype)
    calls = {"step": 0}

    def closure(create_graph: bool = False) -> Tensor:
        model.zero_grad(set_to_none=True)
        start = (calls["step"] * batch) % 64
        x, y = inputs[start : start + batch], targets[start : start + batch]
        loss = ((model(x) - y) ** 2).mean()
        loss.backward(create_graph=create_graph)
        return loss

    def advance() -> None:
        calls["step"] += 1

    closure.advance = advance  # type: ignore[attr-defined]
    return closure
