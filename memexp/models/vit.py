"""Vision Transformer (Dosovitskiy et al. 2021) for small images, timm-style.

Patch embedding (a strided convolution), a learned position embedding, pre-norm transformer blocks
using ``F.scaled_dot_product_attention``, then a class token or mean pooling and a linear head.
The image size comes from the dataset's :class:`DataSpec`; the patch size from the config, or, with
``patch_size: 0``, the smallest patch size >= 2 that divides the image side into at most 8 patches
(8x8 digits -> 2, 28x28 MNIST -> 4, 32x32 CIFAR -> 4), so the sequence stays <= 64 patches.

Parameter counts of the presets (3x32x32 CIFAR-10, patch 4, class token, 10 classes), checked in
tests/models/test_vit.py: vit_tiny (192 wide, 12 deep, 3 heads) 5,362,762;
vit_small (384 wide, 12 deep, 6 heads) 21,342,346.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memexp.data.base import DataSpec
from memexp.errors import ConfigValueError, require
from memexp.models.population import member_layer_norm, member_linear
from memexp.models.registry import MODELS, ModelConfig

POOLING = ("cls", "mean")
MAX_PATCHES_PER_SIDE = 8


@dataclass
class ViTConfig(ModelConfig):
    name: str = "vit"
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 0  # 0: chosen from the image size (see the module docstring)
    pool: str = "cls"  # cls: a class token; mean: the mean of the patch tokens
    qkv_bias: bool = True
    dropout: float = 0.0  # after the position embedding, in the MLPs and after attention projections
    attention_dropout: float = 0.0

    def check(self) -> None:
        require(self.embed_dim > 0, "embed_dim", self.embed_dim, "an integer > 0")
        require(self.depth > 0, "depth", self.depth, "an integer > 0")
        require(
            self.num_heads > 0 and self.embed_dim % self.num_heads == 0,
            "num_heads",
            self.num_heads,
            f"a positive divisor of embed_dim={self.embed_dim}",
        )
        require(self.mlp_ratio > 0, "mlp_ratio", self.mlp_ratio, "a number > 0")
        require(self.patch_size >= 0, "patch_size", self.patch_size, "an integer > 0, or 0 to choose from the image")
        require(self.pool in POOLING, "pool", self.pool, f"one of {', '.join(POOLING)}")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        require(0.0 <= self.attention_dropout < 1.0, "attention_dropout", self.attention_dropout, "a number in [0, 1)")


def default_patch_size(image_side: int) -> int:
    """The smallest patch size >= 2 dividing ``image_side`` into at most 8 patches per side."""
    for patch in range(2, image_side + 1):
        if image_side % patch == 0 and image_side // patch <= MAX_PATCHES_PER_SIDE:
            return patch
    return image_side


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attention_dropout: float, dropout: float):
        super().__init__()
        self.num_heads, self.attention_dropout = num_heads, attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        # (B, N, 3, heads, head_dim) -> three (B, heads, N, head_dim)
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        dropout = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj_dropout(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))

    def population_forward(self, params: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
        """:meth:`forward` of M members at once: ``x`` ``[M, B, N, dim]``, parameters stacked in ``params``."""
        members, batch, tokens, dim = x.shape
        qkv = member_linear(params, f"{prefix}qkv", x)
        # The members' sequences are independent: attention runs on M·B sequences.
        q, k, v = (
            qkv.view(members * batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        )
        dropout = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(members, batch, tokens, dim)
        return self.proj_dropout(member_linear(params, f"{prefix}proj", out))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, attention_dropout: float, dropout: float
    ):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, attention_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def population_forward(self, params: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
        """:meth:`forward` of M members at once: ``x`` ``[M, B, N, dim]``."""
        x = x + self.attn.population_forward(
            params, f"{prefix}attn.", member_layer_norm(params, f"{prefix}norm1", self.norm1, x)
        )
        fc1, activation, dropout1, fc2, dropout2 = self.mlp
        h = member_layer_norm(params, f"{prefix}norm2", self.norm2, x)
        h = dropout1(activation(member_linear(params, f"{prefix}mlp.0", h)))
        return x + dropout2(member_linear(params, f"{prefix}mlp.3", h))


class VisionTransformer(nn.Module):
    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int,
        num_classes: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        pool: str = "cls",
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        self.pool = pool
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        num_tokens = (image_size // patch_size) ** 2 + (1 if pool == "cls" else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, attention_dropout, dropout) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # timm's ViT init: truncated normal(0.02) for linear layers and the position embedding, zero
        # biases, a near-zero class token; the patch convolution keeps PyTorch's default (fan-in) init.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        # Read by memexp.optim.param_groups: position embedding and class token are not decayed when
        # the optimizer's no_decay list contains "embedding" (as in timm).
        return {"pos_embed", "cls_token"}

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(self.pos_dropout(tokens + self.pos_embed)))
        pooled = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)
        return self.head(pooled)

    def population_forward(self, params: dict[str, Tensor], x: Tensor, shared_input: bool = False) -> Tensor:
        """Every member's output ``[M, B, classes]`` from the members' stacked parameters (``[M, ...]``
        per name) on their own batches ``x`` ``[M, B, C, H, W]`` (or, with ``shared_input``, one batch
        ``[B, C, H, W]`` for all): the batched launcher's forward (memexp/batched/population.py).

        Each Linear is one batched product over the members, attention runs on the M·B sequences, and
        the patch embedding (a convolution whose stride is its kernel) is the same product on the
        image cut into patches, so a shared input is cut once. Under ``vmap`` of :meth:`forward`,
        attention had no batching rule and ran member by member. Equal to each member's
        :meth:`forward` to float rounding (tests/models/test_population.py)."""
        members = params["head.weight"].shape[0]
        (patch, _), channels = self.patch_embed.kernel_size, self.patch_embed.in_channels
        images = x if shared_input else x.flatten(0, 1)
        batch, _, height, width = images.shape
        # [B', C, H, W] -> [B', patches, C·p·p], each patch flattened as the kernel's (C, p, p) weights
        patches = images.view(batch, channels, height // patch, patch, width // patch, patch)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * patch * patch)
        weight = params["patch_embed.weight"].flatten(2).transpose(1, 2)  # [M, C·p·p, dim]
        bias = params["patch_embed.bias"].unsqueeze(1)
        if shared_input:  # every member's filters on the one batch: [M, B·patches, dim]
            tokens = torch.baddbmm(bias, patches.flatten(0, 1).expand(members, -1, -1), weight)
        else:
            tokens = torch.baddbmm(bias, patches.view(members, -1, patches.shape[-1]), weight)
        tokens = tokens.view(members, -1, patches.shape[1], weight.shape[-1])  # [M, B, patches, dim]
        batch = tokens.shape[1]
        if self.cls_token is not None:
            cls = params["cls_token"].expand(members, batch, 1, -1)
            tokens = torch.cat([cls, tokens], dim=2)
        tokens = self.pos_dropout(tokens + params["pos_embed"])
        for index, block in enumerate(self.blocks):
            tokens = block.population_forward(params, f"blocks.{index}.", tokens)
        tokens = member_layer_norm(params, "norm", self.norm, tokens)
        pooled = tokens.select(2, 0) if self.cls_token is not None else tokens.mean(dim=2)
        return member_linear(params, "head", pooled)


@MODELS.register("vit", config=ViTConfig)
def build_vit(cfg: ViTConfig, spec: DataSpec) -> VisionTransformer:
    if spec.task != "classification" or len(spec.input_shape) != 3:
        raise ConfigValueError(
            "model",
            "vit",
            f"an image classification dataset (data={spec.name} is {spec.task} "
            f"with inputs {spec.input_shape}); e.g. data=digits or data=cifar10",
        )
    channels, height, width = spec.input_shape
    require(height == width, "model", "vit", f"square images (data={spec.name} is {height}x{width})")
    patch = cfg.patch_size or default_patch_size(height)
    require(height % patch == 0, "model.patch_size", cfg.patch_size, f"a divisor of the image side {height}")
    return VisionTransformer(
        channels,
        height,
        patch,
        spec.num_classes,
        cfg.embed_dim,
        cfg.depth,
        cfg.num_heads,
        cfg.mlp_ratio,
        cfg.pool,
        cfg.qkv_bias,
        cfg.dropout,
        cfg.attention_dropout,
    )
