"""Learning-rate schedules as multipliers of the peak lr, applied through LambdaLR."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from memexp.config import LRSchedule, TrainerConfig


def constant(warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

    return factor


def cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup to the peak over ``warmup_steps``, then a half cosine down to
    ``min_ratio * peak`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    factors: dict[LRSchedule, Callable[[], Callable[[int], float]]] = {
        LRSchedule.constant: lambda: constant(cfg.warmup_steps),
        LRSchedule.cosine: lambda: cosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio),
    }
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors[cfg.lr_schedule]())
