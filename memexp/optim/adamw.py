"""AdamW (decoupled weight decay): torch's own implementation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memexp.optim.base import check_argument, check_betas
from memexp.optim.memory import MemoryFamily
from memexp.optim.registry import OptimizerConfig, OptimizerInfo, register_optimizer


@dataclass
class AdamWConfig(OptimizerConfig):
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    amsgrad: bool = False
    foreach: bool | None = None
    fused: bool | None = None


def check_adamw_arguments(
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    foreach: bool | None = None,
    fused: bool | None = None,
    **_: object,
) -> None:
    """memexp's ranges for torch.optim.AdamW (torch accepts eps = 0, and rejects fused with foreach by
    a RuntimeError that would not name the key)."""
    check_argument(lr >= 0, "lr", lr, "a number >= 0")
    check_betas(betas)
    check_argument(eps > 0, "eps", eps, "a number > 0")
    check_argument(weight_decay >= 0, "weight_decay", weight_decay, "a number >= 0")
    check_argument(not (fused and foreach), "fused", fused, "not true together with foreach=true")


ADAMW_INFO = register_optimizer(
    OptimizerInfo(
        name="adamw",
        optimizer_class=torch.optim.AdamW,
        config=AdamWConfig,
        memory=MemoryFamily.adam,
        decoupled_decay=True,
        state_buffers=("exp_avg", "exp_avg_sq"),
        validate=check_adamw_arguments,
    )
)
