"""A small convolutional network for small images (8x8 digits up to 32x32 CIFAR)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from memexp.data.base import DataSpec
from memexp.errors import require
from memexp.models.population import ChainPopulationForward
from memexp.models.registry import MODELS, ModelConfig


@dataclass
class CNNConfig(ModelConfig):
    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    batch_norm: bool = False
    dropout: float = 0.0

    def check(self) -> None:
        require(
            len(self.channels) > 0 and all(c > 0 for c in self.channels),
            "channels",
            self.channels,
            "a non-empty list of positive integers",
        )
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")


class CNN(ChainPopulationForward, nn.Module):
    """conv3x3 -> [norm] -> ReLU blocks, 2x2 max-pool after each block while the image is >= 4 px,
    then global average pooling and a linear classifier."""

    def __init__(
        self, in_channels: int, image_size: int, channels: list[int], num_classes: int, batch_norm: bool, dropout: float
    ):
        super().__init__()
        layers: list[nn.Module] = []
        size, width = image_size, in_channels
        for out in channels:
            layers.append(nn.Conv2d(width, out, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@MODELS.register("cnn", config=CNNConfig)
def build_cnn(cfg: CNNConfig, spec: DataSpec) -> CNN:
    require(
        spec.task == "classification" and len(spec.input_shape) == 3,
        "model",
        "cnn",
        "an image classification dataset with (channels, height, width) inputs",
    )
    channels, height, _ = spec.input_shape
    return CNN(channels, height, list(cfg.channels), spec.num_classes, cfg.batch_norm, cfg.dropout)
