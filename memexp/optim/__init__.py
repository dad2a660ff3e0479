"""Optimizers, one per file, each registered in :data:`OPTIMIZERS` under its config name."""

from memexp.optim import adamw, sgd  # noqa: F401  (registers the builders)
from memexp.optim.param_groups import param_groups_weight_decay
from memexp.optim.registry import OPTIMIZERS, OptimizerConfig

__all__ = ["OPTIMIZERS", "OptimizerConfig", "param_groups_weight_decay"]
