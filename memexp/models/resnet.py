"""CIFAR-style residual networks: a 3x3 stem with no max-pool, BasicBlock stages, BatchNorm.

Two families by config: the ImageNet-width ResNet-18 adapted to 32x32 images (4 stages of 64..512
channels, projection shortcuts, as in kuangliu/pytorch-cifar), and He et al.'s (2016) CIFAR ResNets
(3 stages of 16/32/64 channels, 6n+2 layers, parameter-free "option A" shortcuts: subsample and
zero-pad the channels). ``preact: true`` gives the pre-activation variant (He et al., "Identity
Mappings in Deep Residual Networks"): BN -> ReLU -> conv inside each block, no BN/ReLU in the stem,
and one BN -> ReLU after the last stage.

Parameter counts with 3x32x32 inputs and 10 classes, checked in tests/models/test_resnet.py:
resnet18 11,173,962 (the figure kuangliu/pytorch-cifar reports), preact_resnet18 11,172,170,
resnet20 269,722 (He et al.'s "0.27M"), resnet56 853,018 ("0.85M").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from memexp.data.base import DataSpec
from memexp.errors import ConfigValueError, require
from memexp.models.registry import MODELS, ModelConfig

SHORTCUTS = ("conv", "pad")


@dataclass
class ResNetConfig(ModelConfig):
    name: str = "resnet"
    stage_blocks: list[int] = field(default_factory=lambda: [3, 3, 3])  # BasicBlocks per stage (resnet20)
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # channels per stage
    preact: bool = False
    shortcut: str = "pad"  # conv: 1x1 conv (+BN) where shapes change (option B); pad: option A, no parameters
    zero_init_residual: bool = False  # start each residual branch at zero (Goyal et al. 2017)

    def check(self) -> None:
        require(
            len(self.stage_blocks) > 0 and all(b > 0 for b in self.stage_blocks),
            "stage_blocks",
            self.stage_blocks,
            "a non-empty list of positive integers",
        )
        require(
            len(self.widths) == len(self.stage_blocks) and all(w > 0 for w in self.widths),
            "widths",
            self.widths,
            f"{len(self.stage_blocks)} positive integers (one per stage)",
        )
        require(self.shortcut in SHORTCUTS, "shortcut", self.shortcut, f"one of {', '.join(SHORTCUTS)}")
        if self.shortcut == "pad":
            require(
                all(b >= a for a, b in zip(self.widths, self.widths[1:])),
                "widths",
                self.widths,
                "non-decreasing widths with shortcut=pad (it zero-pads channels)",
            )


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A: take every ``stride``-th pixel and zero-pad the new channels, half on each side."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_before, self.pad_after = extra // 2, extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int, with_norm: bool) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "pad":
        return PadShortcut(in_channels, out_channels, stride)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if with_norm else conv


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride, with_norm=True)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv, plus the shortcut, no activation after the sum. A projecting
    shortcut reads the pre-activated input (He et al. 2016b, fig. 4e)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride, with_norm=False)
        self.identity_shortcut = isinstance(self.shortcut, nn.Identity)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        residual = x if self.identity_shortcut else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + residual


class ResNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stage_blocks: list[int],
        widths: list[int],
        preact: bool = False,
        shortcut: str = "conv",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        block_type = PreActBlock if preact else BasicBlock
        stem: list[nn.Module] = [conv3x3(in_channels, widths[0])]
        if not preact:
            stem += [nn.BatchNorm2d(widths[0]), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, (count, width) in enumerate(zip(stage_blocks, widths)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(block_type(channels, width, stride, shortcut))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        # Pre-activation blocks end on a sum, so the network applies the last BN-ReLU itself.
        self.final = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU()) if preact else nn.Identity()
        self.head = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for block in self.blocks:
                nn.init.zeros_(block.last_norm().weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.final(self.blocks(self.stem(x)))
        return self.head(out.mean(dim=(2, 3)))


@MODELS.register("resnet", config=ResNetConfig)
def build_resnet(cfg: ResNetConfig, spec: DataSpec) -> ResNet:
    if spec.task != "classification" or len(spec.input_shape) != 3:
        raise ConfigValueError(
            "model",
            "resnet",
            f"an image classification dataset (data={spec.name} is "
            f"{spec.task} with inputs {spec.input_shape}); e.g. data=cifar10",
        )
    return ResNet(
        spec.input_shape[0],
        spec.num_classes,
        list(cfg.stage_blocks),
        list(cfg.widths),
        cfg.preact,
        cfg.shortcut,
        cfg.zero_init_residual,
    )
