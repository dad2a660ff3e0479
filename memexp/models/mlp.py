"""A multi-layer perceptron on flattened inputs: the fastest default model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from memexp.data.base import DataSpec
from memexp.errors import require
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


class MLP(nn.Module):
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

    def population_forward(self, params: dict[str, Tensor], x: Tensor, shared_input: bool = False) -> Tensor:
        """Every member's logits at once (the batched launcher, memexp/batched/population.py).

        ``params``: this module's parameters stacked over M members (``[M, ...]`` per name, as
        ``torch.func.stack_module_state`` gives them); ``x``: each member's own batch ``[M, B, ...]``,
        or with ``shared_input`` one batch ``[B, ...]`` for all (an evaluation set). Returns
        ``[M, B, classes]``: member m's ``forward`` with its parameters, to float rounding.

        The layers are ``forward``'s own; only the layout differs. Activations are kept as
        ``[M, features, B]``, so each Linear is one batched matmul ``W·h`` whose weight gradient
        (grad·hᵀ) comes out in the weight's own layout. ``vmap`` of ``forward`` computes ``h·Wᵀ``
        instead, and its backward pays a transposed copy of every weight gradient, which on the
        default MLP is most of the population's overhead over its matmuls.
        """
        h = x.flatten(1).T if shared_input else x.flatten(2).transpose(1, 2)  # [F, B] or [M, F, B]
        for index, layer in enumerate(self.net):
            if isinstance(layer, nn.Flatten):
                continue  # done above, per member
            if isinstance(layer, nn.Linear):
                weight, bias = params[f"net.{index}.weight"], params.get(f"net.{index}.bias")
                if h.dim() == 2:  # the shared input: one [M·out, F] × [F, B] product
                    h = torch.matmul(weight, h)
                    h = h if bias is None else h + bias.unsqueeze(2)
                else:
                    h = torch.bmm(weight, h) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, h)
            else:  # activations and dropout: elementwise, any layout (dropout draws per member)
                h = layer(h)
        return h.transpose(1, 2)


@MODELS.register("mlp", config=MLPConfig)
def build_mlp(cfg: MLPConfig, spec: DataSpec) -> MLP:
    require(spec.task == "classification", "model", "mlp", "a classification dataset (not language modelling)")
    return MLP(math.prod(spec.input_shape), list(cfg.hidden_sizes), spec.num_classes, cfg.activation, cfg.dropout)
