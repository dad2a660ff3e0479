"""LR schedules: exact values at known steps."""

from __future__ import annotations

import math

import pytest
import torch

from memexp.config import LRSchedule, TrainerConfig
from memexp.schedules import build_scheduler, constant, cosine


def test_cosine_with_warmup_closed_form() -> None:
    factor = cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1)  # first step of warmup: 1/10 of the peak
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(110) == pytest.approx(0.1)
    assert factor(500) == pytest.approx(0.1)


def test_constant_with_warmup() -> None:
    factor = constant(warmup_steps=4)
    assert [factor(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert constant(0)(0) == 1.0


def test_scheduler_drives_the_optimizer_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    cfg = TrainerConfig(lr_schedule=LRSchedule.cosine, warmup_steps=0, min_lr_ratio=0.0)
    scheduler = build_scheduler(optimizer, cfg, total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([2.0 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])
