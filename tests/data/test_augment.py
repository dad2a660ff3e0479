"""Device batch augmentation equals torchvision's RandomCrop(padding) + RandomHorizontalFlip."""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF
from torchvision import transforms

from memexp.data.augment import RandomCropFlip

MEAN = torch.tensor([0.49, 0.48, 0.45])
STD = torch.tensor([0.25, 0.24, 0.26])


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    return (images_uint8.float() / 255 - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)


def test_equals_the_torchvision_pipeline_for_the_sampled_offsets_and_flips():
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (64, 3, 10, 12), dtype=torch.uint8, generator=generator)
    augment = RandomCropFlip(padding=3, hflip=True, fill=-MEAN / STD)
    params = augment.sample(64, torch.Generator().manual_seed(7))
    out = augment.apply(normalize(raw), params)
    assert out.shape == (64, 3, 10, 12)
    for n in range(64):
        # torchvision: pad the raw image with black, crop at (top, left), flip, then normalize.
        expected = TF.crop(TF.pad(raw[n], [3], fill=0), int(params.top[n]), int(params.left[n]), 10, 12)
        if params.flip[n]:
            expected = TF.hflip(expected)
        torch.testing.assert_close(out[n], normalize(expected[None])[0], rtol=0, atol=1e-6)


def test_offsets_cover_exactly_torchvision_range_and_flips_are_fair():
    padding, n = 4, 4000
    params = RandomCropFlip(padding, hflip=True).sample(n, torch.Generator().manual_seed(0))
    for offsets in (params.top, params.left):
        assert offsets.min() == 0 and offsets.max() == 2 * padding
        counts = torch.bincount(offsets, minlength=2 * padding + 1).float()
        # Uniform over 9 values: each count ~ Binomial(4000, 1/9), sd ~ 19.9; allow 5 sd.
        assert (counts - n / 9).abs().max() < 5 * (n * (1 / 9) * (8 / 9)) ** 0.5
    # Flip ~ Binomial(4000, 1/2), sd ~ 31.6.
    assert abs(params.flip.sum().item() - n / 2) < 5 * 31.7
    # torchvision's own sampler covers the same range: RandomCrop.get_params on a (H + 2p) image.
    padded = torch.zeros(1, 40, 40)
    tv_tops = {transforms.RandomCrop.get_params(padded, (32, 32))[0] for _ in range(500)}
    assert tv_tops == set(range(2 * padding + 1)) == set(params.top.tolist())


def test_fixed_seed_gives_the_same_batch_and_switches_work():
    x = torch.randn(16, 1, 8, 8)
    augment = RandomCropFlip(padding=2, hflip=True)
    first = augment(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(augment(x, torch.Generator().manual_seed(3)), first, rtol=0, atol=0)
    assert not torch.equal(augment(x, torch.Generator().manual_seed(4)), first)
    no_flip = RandomCropFlip(padding=0, hflip=False)
    torch.testing.assert_close(no_flip(x, torch.Generator().manual_seed(0)), x, rtol=0, atol=0)
    flip_only = RandomCropFlip(padding=0, hflip=True)
    params = flip_only.sample(16, torch.Generator().manual_seed(5))
    out = flip_only.apply(x, params)
    torch.testing.assert_close(out[params.flip], x[params.flip].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(out[~params.flip], x[~params.flip], rtol=0, atol=0)
