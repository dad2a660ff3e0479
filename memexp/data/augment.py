"""Batch image augmentation on the training device, with torchvision's semantics.

``RandomCrop(size, padding=p)`` followed by ``RandomHorizontalFlip(0.5)``, applied to a whole batch
of already-normalised images at once: each image gets its own crop offset, drawn uniformly from
``{0, ..., 2p}`` in each direction (torchvision: ``randint(0, h + 2p - h + 1)``), and is flipped with
probability 1/2. torchvision pads the *raw* image with 0 (black) before normalising; on normalised
data that pixel value is ``(0 - mean) / std`` per channel, so that is the fill used here, and the
result equals the torchvision pipeline exactly (tests/data/test_augment.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CropFlipParams:
    top: Tensor  # (N,) row offset into the padded image, in [0, 2 * padding]
    left: Tensor  # (N,) column offset
    flip: Tensor  # (N,) bool


class RandomCropFlip:
    """Callable ``(batch, generator) -> batch`` for :class:`memexp.data.base.TensorBatchIterator`."""

    def __init__(self, padding: int, hflip: bool, fill: Tensor | None = None) -> None:
        self.padding, self.hflip = padding, hflip
        self.fill = fill  # (C,) per-channel value of a padded pixel; None: 0

    def sample(self, batch: int, generator: torch.Generator) -> CropFlipParams:
        device = generator.device
        top = torch.randint(0, 2 * self.padding + 1, (batch,), generator=generator, device=device)
        left = torch.randint(0, 2 * self.padding + 1, (batch,), generator=generator, device=device)
        if self.hflip:
            flip = torch.rand(batch, generator=generator, device=device) < 0.5
        else:
            flip = torch.zeros(batch, dtype=torch.bool, device=device)
        return CropFlipParams(top, left, flip)

    def apply(self, x: Tensor, params: CropFlipParams) -> Tensor:
        batch, channels, height, width = x.shape
        p = self.padding
        if p > 0:
            padded = x.new_empty(batch, channels, height + 2 * p, width + 2 * p)
            fill = self.fill.to(device=x.device, dtype=x.dtype) if self.fill is not None else x.new_zeros(channels)
            padded[:] = fill.view(1, channels, 1, 1)
            padded[:, :, p : p + height, p : p + width] = x
            rows = params.top.to(x.device)[:, None] + torch.arange(height, device=x.device)  # (N, H)
            cols = params.left.to(x.device)[:, None] + torch.arange(width, device=x.device)  # (N, W)
            # One gather per axis: (N, C, H+2p, W+2p) -> (N, C, H, W+2p) -> (N, C, H, W).
            x = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, width + 2 * p))
            x = x.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))
        if self.hflip:
            x = torch.where(params.flip.to(x.device).view(batch, 1, 1, 1), x.flip(-1), x)
        return x

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], generator))
