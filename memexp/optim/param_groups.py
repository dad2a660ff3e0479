"""Split a model's parameters into a decayed and a non-decayed group (timm's
``param_groups_weight_decay``, nanoGPT's configure_optimizers)."""

from __future__ import annotations

from typing import Any

from torch import nn

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _categories_by_param(model: nn.Module) -> dict[int, set[str]]:
    """Map id(parameter) -> the no-decay categories it belongs to."""
    categories: dict[int, set[str]] = {}
    explicit = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            found = categories.setdefault(id(param), set())
            if param_name == "bias" or param_name.endswith("_bias"):
                found.add("bias")
            if isinstance(module, NORM_TYPES):
                found.add("norm")
            if isinstance(module, nn.Embedding | nn.EmbeddingBag) or full_name in explicit:
                found.add("embedding")
            if param.ndim <= 1:
                found.add("1d")
    return categories


def unique_trainable(model: nn.Module) -> list[nn.Parameter]:
    seen: set[int] = set()
    params = []
    for param in model.parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            params.append(param)
    return params


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_decay: list[str] | tuple[str, ...]
) -> list[dict[str, Any]]:
    """Two parameter groups: ``weight_decay`` for most weights, 0 for the ``no_decay`` categories.

    Shared (tied) parameters appear once. Frozen parameters are left out. Empty groups are dropped.
    """
    if weight_decay == 0:
        # Nothing to exclude: one group, so the optimizer runs one fused update per step, not two.
        return [{"params": unique_trainable(model), "weight_decay": 0.0}]
    categories = _categories_by_param(model)
    excluded = set(no_decay)
    decay, no_decay_params, seen = [], [], set()
    for _, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay_params if categories[id(param)] & excluded else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay_params, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
