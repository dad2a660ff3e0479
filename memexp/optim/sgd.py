"""SGD with (optionally Nesterov) momentum: torch's own implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from memexp.errors import require
from memexp.optim.registry import OPTIMIZERS, OptimizerConfig


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False
    foreach: bool | None = None  # None: torch picks the fastest path

    def check(self) -> None:
        super().check()
        self.check_beta("momentum", self.momentum)
        require(0.0 <= self.dampening <= 1.0, "dampening", self.dampening, "a number in [0, 1]")
        require(
            not self.nesterov or (self.momentum > 0 and self.dampening == 0),
            "nesterov",
            self.nesterov,
            "true only with momentum > 0 and dampening = 0",
        )


@OPTIMIZERS.register("sgd", config=SGDConfig)
def build_sgd(param_groups: list[dict[str, Any]], cfg: SGDConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        param_groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        dampening=cfg.dampening,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        foreach=cfg.foreach,
    )
