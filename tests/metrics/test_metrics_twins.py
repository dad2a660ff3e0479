"""The metrics' correction term against the memoryless twins' own: both use memexp.optim.memory, so at
the same iterate they must give the same number, decoupled weight decay's term included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memexp.config import MetricsConfig
from memexp.metrics import compute_metrics
from memexp.optim import MemorylessAdamW, MemorylessLion, MemorylessSGD

TWINS = {
    "sgd": (MemorylessSGD, dict(lr=0.01, momentum=0.9)),
    "sgd_coupled_decay": (MemorylessSGD, dict(lr=0.01, momentum=0.9, weight_decay=0.3)),
    "adamw": (MemorylessAdamW, dict(lr=1e-3, betas=(0.9, 0.999))),
    "adamw_no_decay": (MemorylessAdamW, dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)),
    # beta2 = 0.9999 at n = 3: where the closed-form sums lost 5 digits (docs/memory_theory.md).
    "adamw_long_memory": (MemorylessAdamW, dict(lr=1e-2, betas=(0.9, 0.9999), weight_decay=0.5)),
    "lion": (MemorylessLion, dict(lr=1e-4, betas=(0.9, 0.99))),
    "lion_decay": (MemorylessLion, dict(lr=1e-3, betas=(0.9, 0.9999), weight_decay=0.5)),
}


@pytest.mark.parametrize("name", sorted(TWINS))
def test_correction_equals_the_twins_implicit_penalty(name: str) -> None:
    cls, kwargs = TWINS[name]
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    optimizer = cls(model.parameters(), **kwargs)

    def closure(create_graph: bool = False) -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward(create_graph=create_graph)
        return loss

    for _ in range(3):
        optimizer.step(closure)
    # The twin reports the penalty at the iterate its step starts from: measure there, then step.
    metrics = compute_metrics(
        model, F.cross_entropy, (x, y), optimizer, MetricsConfig(every=1, include=["correction_ratio"]), step=3
    )
    optimizer.step(closure)
    stats = optimizer.last_stats
    assert metrics["geom/correction"] == pytest.approx(float(stats["implicit_penalty"]), rel=1e-12)
    assert metrics["geom/correction_ratio"] == pytest.approx(float(stats["correction_ratio"]), rel=1e-5)
