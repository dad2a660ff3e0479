"""AdamW (decoupled weight decay): torch's own implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from memexp.errors import require
from memexp.optim.registry import OPTIMIZERS, OptimizerConfig


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

    def check(self) -> None:
        super().check()
        self.check_beta("beta1", self.beta1)
        self.check_beta("beta2", self.beta2)
        require(self.eps > 0, "eps", self.eps, "a number > 0")


@OPTIMIZERS.register("adamw", config=AdamWConfig)
def build_adamw(param_groups: list[dict[str, Any]], cfg: AdamWConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        amsgrad=cfg.amsgrad,
        foreach=cfg.foreach,
        fused=cfg.fused,
    )
