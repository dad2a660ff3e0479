"""The model registry and the config fields every model shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memexp.registry import Registry


@dataclass
class ModelConfig:
    name: str = "?"

    def check(self) -> None:
        pass


# A builder takes the model's config dataclass instance and the dataset's DataSpec
# (input shape, number of classes / vocabulary size, task) and returns an nn.Module.
ModelBuilder = Callable[[Any, Any], Any]
MODELS: Registry[ModelBuilder] = Registry("model")
