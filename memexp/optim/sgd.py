"""SGD with (optionally Nesterov) momentum: torch's own implementation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memexp.optim.base import check_argument
from memexp.optim.memory import MemoryFamily
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False
    foreach: bool | None = None  # None: torch picks the fastest path


def check_sgd_arguments(
    lr: float, momentum: float, dampening: float, nesterov: bool, weight_decay: float, **_: object
) -> None:
    """memexp's ranges for torch.optim.SGD (torch itself accepts momentum >= 1 and any dampening)."""
    check_argument(lr >= 0, "lr", lr, "a number >= 0")
    check_argument(0.0 <= momentum < 1.0, "momentum", momentum, "a number in [0, 1)")
    check_argument(0.0 <= dampening <= 1.0, "dampening", dampening, "a number in [0, 1]")
    nesterov_allowed = not nesterov or (momentum > 0 and dampening == 0)
    check_argument(nesterov_allowed, "nesterov", nesterov, "true only with momentum > 0 and dampening = 0")
    check_argument(weight_decay >= 0, "weight_decay", weight_decay, "a number >= 0")


SGD_INFO = register_optimizer(
    OptimizerInfo(
        name="sgd",
        optimizer_class=torch.optim.SGD,
        config=SGDConfig,
        memory=MemoryFamily.heavy_ball,
        decoupled_decay=False,
        state_buffers=("momentum_buffer",),
        validate=check_sgd_arguments,
    )
)
