"""CIFAR ResNets: published parameter counts, shortcuts, pre-activation identity, forward/backward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import memexp.train  # noqa: F401  (imports every registry, storing all schemas)
from memexp.config import register_configs
from memexp.data.base import DataSpec
from memexp.errors import ConfigValueError
from memexp.models import MODELS
from memexp.models.resnet import PadShortcut, ResNet, ResNetConfig

CONF = str(Path(__file__).resolve().parents[2] / "conf")
CIFAR10 = DataSpec("cifar10", "classification", (3, 32, 32), 10)


def preset(name: str) -> ResNetConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    model_cfg = OmegaConf.to_object(cfg.model)
    model_cfg.check()
    return model_cfg


@pytest.mark.parametrize(
    ("name", "documented"),
    [
        ("resnet18", 11_173_962),  # kuangliu/pytorch-cifar's ResNet18
        ("preact_resnet18", 11_172_170),  # kuangliu's PreActResNet18 (11,171,146) + the final BN (2 x 512)
        ("resnet20", 269_722),  # He et al. 2016, table 6: 0.27M
        ("resnet", 269_722),
        ("resnet56", 853_018),  # 0.85M
    ],
)
def test_preset_parameter_counts_match_the_published_values(name, documented):
    with torch.device("meta"):
        model = MODELS.build("resnet", preset(name), CIFAR10)
    assert sum(p.numel() for p in model.parameters()) == documented


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "resnet20"])
def test_forward_backward_on_cifar_and_digit_sized_images(name):
    cfg = preset(name)
    cfg.widths = [w // 8 for w in cfg.widths] if name != "resnet20" else cfg.widths
    torch.manual_seed(0)
    for spec in (CIFAR10, DataSpec("digits", "classification", (1, 8, 8), 10)):
        model = MODELS.build("resnet", cfg, spec)
        out = model(torch.randn(4, *spec.input_shape))
        assert out.shape == (4, 10)
        torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
        for param_name, param in model.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), param_name


def test_pad_shortcut_subsamples_and_zero_pads_channels_evenly():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).view(2, 4, 4, 4)
    out = PadShortcut(4, 8, stride=2)(x)
    assert out.shape == (2, 8, 2, 2)
    assert (out[:, :2] == 0).all() and (out[:, 6:] == 0).all()
    torch.testing.assert_close(out[:, 2:6], x[:, :, ::2, ::2], rtol=0, atol=0)


def test_zero_initialised_preactivation_blocks_are_identities():
    torch.manual_seed(0)
    model = ResNet(3, 10, stage_blocks=[3], widths=[8], preact=True, zero_init_residual=True)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(model.blocks(x), x, rtol=0, atol=0)
    plain = ResNet(3, 10, stage_blocks=[3], widths=[8], preact=False, zero_init_residual=True)
    # A post-activation block with a zero branch is relu(x + 0): the identity on non-negative inputs.
    torch.testing.assert_close(plain.blocks(x.abs()), x.abs(), rtol=0, atol=0)


def test_eval_mode_uses_running_statistics():
    torch.manual_seed(0)
    model = ResNet(3, 10, stage_blocks=[1, 1], widths=[8, 16])
    x = torch.randn(8, 3, 8, 8) * 3 + 1
    model.train()
    model(x)
    model.eval()
    single = model(x[:1])
    torch.testing.assert_close(single, model(x)[:1], rtol=1e-5, atol=1e-6)  # eval: no dependence on the batch


def test_bad_values_name_their_key():
    cfg = ResNetConfig(stage_blocks=[2, 2], widths=[16])
    with pytest.raises(ConfigValueError, match="widths"):
        cfg.check()
    with pytest.raises(ConfigValueError, match="shortcut"):
        ResNetConfig(shortcut="x").check()
    with pytest.raises(ConfigValueError, match="image classification"):
        MODELS.build("resnet", ResNetConfig(), DataSpec("stdlib_text", "lm", (64,), 256))
