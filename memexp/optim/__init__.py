"""Optimizers, one per file, each registered in :data:`OPTIMIZERS` under its config name."""

from memexp.optim import adamw, sgd  # noqa: F401  (registers the builders)
from memexp.optim.adamw_memoryless import MemorylessAdamW
from memexp.optim.am_adamw import AdaptiveMemoryAdamW
from memexp.optim.am_sgd import AdaptiveMemorySGD
from memexp.optim.lion import Lion
from memexp.optim.lion_k import LionK
from memexp.optim.lion_memoryless import MemorylessLion
from memexp.optim.param_groups import param_groups_weight_decay
from memexp.optim.projected_adam import ProjectedAdam
from memexp.optim.registry import OPTIMIZERS, OptimizerConfig, OptimizerInfo, describe, twin_for
from memexp.optim.sgd_memoryless import MemorylessSGD

__all__ = ["OPTIMIZERS", "OptimizerConfig", "OptimizerInfo", "describe", "param_groups_weight_decay", "twin_for"]
__all__ += ["AdaptiveMemoryAdamW", "AdaptiveMemorySGD", "Lion", "LionK"]
__all__ += ["MemorylessAdamW", "MemorylessLion", "MemorylessSGD", "ProjectedAdam"]
