"""ViT: shapes, gradients, attention against a float64 reference, patch-size rule, preset sizes."""

from __future__ import annotations

import math
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
from memexp.models.vit import SelfAttention, VisionTransformer, default_patch_size
from memexp.optim import param_groups_weight_decay

CONF = str(Path(__file__).resolve().parents[2] / "conf")
CIFAR10 = DataSpec("cifar10", "classification", (3, 32, 32), 10)
DIGITS = DataSpec("digits", "classification", (1, 8, 8), 10)


def preset(name: str):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    model_cfg = OmegaConf.to_object(cfg.model)
    model_cfg.check()
    return model_cfg


def vit_parameter_count(
    channels: int, image: int, patch: int, dim: int, depth: int, classes: int, mlp_ratio: float = 4.0
) -> int:
    """Closed form, counted by hand from the architecture."""
    hidden = int(dim * mlp_ratio)
    tokens = (image // patch) ** 2 + 1  # + class token
    patch_embed = channels * patch * patch * dim + dim
    norms, attention = 2 * (2 * dim), (dim * 3 * dim + 3 * dim) + (dim * dim + dim)
    block = norms + attention + (dim * hidden + hidden) + (hidden * dim + dim)
    return patch_embed + dim + tokens * dim + depth * block + 2 * dim + dim * classes + classes


@pytest.mark.parametrize(
    ("name", "documented", "dim", "heads"),
    [
        ("vit_tiny", 5_362_762, 192, 3),
        ("vit_small", 21_342_346, 384, 6),
        ("vit", 5_362_762, 192, 3),
    ],
)
def test_preset_parameter_counts_match_the_documented_values(name, documented, dim, heads):
    cfg = preset(name)
    assert (cfg.embed_dim, cfg.num_heads, cfg.depth) == (dim, heads, 12)
    with torch.device("meta"):
        model = MODELS.build("vit", cfg, CIFAR10)
    count = sum(p.numel() for p in model.parameters())
    assert count == documented == vit_parameter_count(3, 32, 4, dim, 12, 10)


@pytest.mark.parametrize(("side", "patch"), [(8, 2), (28, 4), (32, 4), (64, 8), (224, 28), (7, 7)])
def test_default_patch_size_keeps_at_most_8_patches_per_side(side, patch):
    assert default_patch_size(side) == patch


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_forward_backward_on_digits_and_cifar_shapes(pool):
    torch.manual_seed(0)
    for spec in (DIGITS, CIFAR10):
        model = VisionTransformer(
            spec.input_shape[0],
            spec.input_shape[1],
            default_patch_size(spec.input_shape[1]),
            spec.num_classes,
            embed_dim=32,
            depth=2,
            num_heads=4,
            pool=pool,
        )
        x = torch.randn(5, *spec.input_shape)
        out = model(x)
        assert out.shape == (5, spec.num_classes)
        torch.nn.functional.cross_entropy(out, torch.arange(5) % 10).backward()
        for name, param in model.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            if name != "cls_token":  # the class token's gradient is tiny but must exist
                assert param.grad.abs().sum() > 0, name


def test_attention_matches_a_float64_softmax_reference():
    torch.manual_seed(1)
    attention = SelfAttention(dim=12, num_heads=3, qkv_bias=True, attention_dropout=0.0, dropout=0.0).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    q, k, v = attention.qkv(x).split(12, dim=-1)
    heads = [slice(h * 4, (h + 1) * 4) for h in range(3)]
    outs = []
    for head in heads:
        scores = q[..., head] @ k[..., head].transpose(1, 2) / math.sqrt(4)
        outs.append(torch.softmax(scores, dim=-1) @ v[..., head])
    expected = attention.proj(torch.cat(outs, dim=-1))
    torch.testing.assert_close(attention(x), expected, rtol=1e-10, atol=1e-12)


def test_mean_pooling_has_no_class_token_and_one_fewer_position():
    cls_model = VisionTransformer(1, 8, 2, 10, embed_dim=16, depth=1, num_heads=2, pool="cls")
    mean_model = VisionTransformer(1, 8, 2, 10, embed_dim=16, depth=1, num_heads=2, pool="mean")
    assert cls_model.pos_embed.shape == (1, 17, 16) and mean_model.pos_embed.shape == (1, 16, 16)
    assert mean_model.cls_token is None


def test_position_embedding_and_class_token_are_not_decayed():
    model = VisionTransformer(1, 8, 2, 10, embed_dim=16, depth=1, num_heads=2)
    decay, no_decay = param_groups_weight_decay(model, 0.1, ["bias", "norm", "embedding"])
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.pos_embed) in no_decay_ids and id(model.cls_token) in no_decay_ids
    assert id(model.head.weight) in {id(p) for p in decay["params"]}


def test_builder_rejects_a_patch_size_that_does_not_divide_the_image_and_text_data():
    cfg = preset("vit")
    cfg.patch_size = 3
    with pytest.raises(ConfigValueError, match="model.patch_size"):
        MODELS.build("vit", cfg, DIGITS)
    with pytest.raises(ConfigValueError, match="image classification"):
        MODELS.build("vit", preset("vit"), DataSpec("stdlib_text", "lm", (64,), 256))
