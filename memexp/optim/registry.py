"""The optimizer registry and the config fields every optimizer shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memexp.errors import require
from memexp.registry import Registry

# Categories of parameters that get no weight decay by default (the nanoGPT / timm convention).
NO_DECAY_CATEGORIES = ("bias", "norm", "embedding", "1d")


@dataclass
class OptimizerConfig:
    name: str = "?"
    lr: float = 1e-3
    weight_decay: float = 0.0
    # Parameters in these categories get weight_decay=0: "bias", "norm" (norm-layer weights),
    # "embedding" (nn.Embedding weights and whatever the model's no_weight_decay() names),
    # "1d" (every parameter with ndim <= 1).
    no_decay: list[str] = field(default_factory=lambda: ["bias", "norm", "embedding"])

    def check(self) -> None:
        require(self.lr > 0, "lr", self.lr, "a number > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        for category in self.no_decay:
            require(category in NO_DECAY_CATEGORIES, "no_decay", category, f"items from {NO_DECAY_CATEGORIES}")

    def check_beta(self, key: str, value: float) -> None:
        require(0.0 <= value < 1.0, key, value, "a number in [0, 1)")


# A builder takes parameter groups (see memexp.optim.param_groups) and the optimizer's config
# dataclass instance, and returns a torch.optim.Optimizer.
OptimizerBuilder = Callable[[list[dict[str, Any]], Any], Any]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer")
