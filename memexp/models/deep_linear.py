"""A deep linear network x -> W_depth ... W_2 W_1 x: no activations, no biases. Depth 2 is the
two-layer linear network in which Jiang, Malik & Li prove that Adam reaches lower R_med than SGD
with momentum (seed 001; docs/rmed.md). The function is linear, the loss landscape is not."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from memexp.data.base import DataSpec
from memexp.errors import require
from memexp.models.population import ChainPopulationForward
from memexp.models.registry import MODELS, ModelConfig


@dataclass
class DeepLinearConfig(ModelConfig):
    name: str = "deep_linear"
    depth: int = 2  # number of weight matrices
    width: int = 64  # hidden width of every inner layer
    init_scale: float = 1.0  # each layer N(0, init_scale^2 / fan_in): 1.0 keeps the signal's scale

    def check(self) -> None:
        require(self.depth >= 1, "depth", self.depth, "an integer >= 1")
        require(self.width > 0, "width", self.width, "an integer > 0")
        require(self.init_scale > 0, "init_scale", self.init_scale, "a number > 0")


class DeepLinear(ChainPopulationForward, nn.Module):
    def __init__(self, in_features: int, out_features: int, depth: int, width: int, init_scale: float) -> None:
        super().__init__()
        sizes = [in_features] + [width] * (depth - 1) + [out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=init_scale / math.sqrt(layer.in_features))

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return x


@MODELS.register("deep_linear", config=DeepLinearConfig)
def build_deep_linear(cfg: DeepLinearConfig, spec: DataSpec) -> DeepLinear:
    require(
        spec.task != "lm", "model", "deep_linear", "a regression or classification dataset (not language modelling)"
    )
    return DeepLinear(math.prod(spec.input_shape), spec.num_classes, cfg.depth, cfg.width, cfg.init_scale)
