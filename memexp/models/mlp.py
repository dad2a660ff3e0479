"""A multi-layer perceptron on flattened inputs: the fastest default model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor, nn

from memexp.data.base import DataSpec
from memexp.errors import require
from memexp.models.population import ChainPopulationForward
from memexp.models.registry import MODELS, ModelConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 128])
    activation: str = "relu"
    dropout: float = 0.0

    def check(self) -> None:
        require(all(h > 0 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes, "positive integers")
        require(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {sorted(ACTIVATIONS)}")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")


class MLP(ChainPopulationForward, nn.Module):
    def __init__(self, in_features: int, hidden_sizes: list[int], num_classes: int, activation: str, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@MODELS.register("mlp", config=MLPConfig)
def build_mlp(cfg: MLPConfig, spec: DataSpec) -> MLP:
    require(spec.task == "classification", "model", "mlp", "a classification dataset (not language modelling)")
    return MLP(math.prod(spec.input_shape), list(cfg.hidden_sizes), spec.num_classes, cfg.activation, cfg.dropout)
