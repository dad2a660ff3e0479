"""The forward pass of M copies of a model at once, from their stacked parameters: the batched
launcher's forward (memexp/batched/population.py), here for models that are a plain chain of layers.

``vmap`` of a model's ``forward`` (the launcher's first path) is exact but moves the member
dimension around every operation: each Linear becomes ``h·Wᵀ`` whose weight gradient needs a
transposed copy, and max-pooling runs on the strided view vmap leaves after its grouped convolution
(on the digits CNN, pooling and those copies took two thirds of a population's step). Here each
layer is one ordinary batched operation in a layout chosen for it:

- images ``[B, M·C, H, W]``: member m's channels are the m-th block of C. A Conv2d is one grouped
  convolution (``groups = M``); ReLU, max/average pooling and dropout act per channel, so they run
  unchanged, as on one model with M·C channels;
- features ``[M, F, B]``: a Linear is one batched matmul ``W·h`` (``baddbmm``), whose weight
  gradient ``grad·hᵀ`` comes out in the weight's own layout; activations and dropout are elementwise.

Member m's output equals its ``forward`` with its own parameters to float rounding (tested in
float64 against each member's ``forward``). Dropout draws an independent mask per member, as ``vmap(...,
randomness="different")`` does.

Models that are not a chain (the ViT) write their population forward from the per-member layers
below, which act on the token layout ``[M, ..., F]``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Layers that act on each channel (images) or each entry (features) on their own: they run as they
# are on the population's layouts.
PER_CHANNEL = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Dropout)


def chain_population_forward(
    layers: Iterable[tuple[str, nn.Module]], params: dict[str, Tensor], x: Tensor, shared_input: bool = False
) -> Tensor:
    """Every member's output ``[M, B, classes]`` of the chain ``layers`` ((name, module) pairs in
    forward order; the model's forward must be exactly their composition).

    ``params``: the chain's parameters stacked over M members (``[M, ...]`` per name, as
    ``torch.func.stack_module_state`` gives them); ``x``: each member's own batch ``[M, B, ...]``,
    or with ``shared_input`` one batch ``[B, ...]`` for all (an evaluation set).
    """
    members = next(iter(params.values())).shape[0]
    h, layout = x, "input"
    for name, layer in _pool_before_relu(list(layers)):
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros":  # F.conv2d pads with zeros only
                raise TypeError(f"{name}: Conv2d with padding_mode={layer.padding_mode!r} has no population forward")
            weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
            if layout == "input" and shared_input and layer.groups > 1:
                # Member-major output channels cannot come from one grouped convolution: per member.
                h, shared_input = h.expand(members, *h.shape), False
            if layout == "input":
                # Channels-last: with M·C channels on a few pixels, torch's CPU max-pooling over NCHW
                # runs a plane at a time (64×512×8×8: 5.0 ms vs 0.32 ms channels-last), and the
                # grouped convolutions run 1.1-2.4× faster. The sums run in another order than the
                # single run's NCHW convolution: gradients agree to float rounding, not bit for bit.
                if shared_input:  # one convolution with every member's filters: [B, M·C_out, H, W]
                    h = h.contiguous(memory_format=torch.channels_last)
                    h = F.conv2d(h, weight.flatten(0, 1), _flat(bias), layer.stride, layer.padding, layer.dilation)
                    layout = "image"
                    continue
                h = h.transpose(0, 1).flatten(1, 2)  # [M, B, C, H, W] -> [B, M·C, H, W]
                h = h.contiguous(memory_format=torch.channels_last)
            elif layout != "image":
                raise TypeError(f"{name}: a Conv2d after the features were flattened")
            groups = members * layer.groups
            h = F.conv2d(h, weight.flatten(0, 1), _flat(bias), layer.stride, layer.padding, layer.dilation, groups)
            layout = "image"
        elif isinstance(layer, nn.Flatten):
            h, layout = _features(h, layout, members, shared_input), "features"
        elif isinstance(layer, nn.Linear):
            if layout != "features":
                h, layout = _features(h, layout, members, shared_input), "features"
            weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
            if h.dim() == 2:  # the shared input, not yet per member: one [M·out, F] × [F, B] product
                stacked = weight.flatten(0, 1)
                h = stacked @ h if bias is None else torch.addmm(bias.flatten().unsqueeze(1), stacked, h)
                h = h.view(members, -1, h.shape[-1])
            else:
                h = torch.bmm(weight, h) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, h)
        elif isinstance(layer, ELEMENTWISE if layout == "features" else PER_CHANNEL) and layout != "input":
            h = layer(h)
        else:
            raise TypeError(f"{name}: {type(layer).__name__} has no population forward in the {layout} layout")
    if layout != "features" or h.dim() != 3:
        raise TypeError("a population forward ends with a Linear layer")
    return h.transpose(1, 2)


class ChainPopulationForward:
    """Mixin for models that are a plain chain of layers (nested ``nn.Sequential``s, forward = their
    composition): gives them the batched launcher's ``population_forward``."""

    def population_forward(self, params: dict[str, Tensor], x: Tensor, shared_input: bool = False) -> Tensor:
        """M members' outputs at once from their stacked parameters (:func:`chain_population_forward`)."""
        assert isinstance(self, nn.Module)
        return chain_population_forward(chain_layers(self), params, x, shared_input)


def chain_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules of ``model`` in registration order: its forward order for a model built as
    nested ``nn.Sequential`` chains (what a model opting in to :func:`chain_population_forward`
    promises)."""
    return [(name, module) for name, module in model.named_modules() if not any(module.children())]


def member_linear(params: dict[str, Tensor], name: str, h: Tensor) -> Tensor:
    """The Linear ``name`` of every member on its own inputs ``h`` ``[M, ..., in]`` -> ``[M, ..., out]``:
    one batched product over the flattened middle dimensions."""
    weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
    rows = h.reshape(h.shape[0], -1, h.shape[-1])
    out = (
        torch.bmm(rows, weight.transpose(1, 2))
        if bias is None
        else torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2))
    )
    return out.view(*h.shape[:-1], weight.shape[1])


def member_layer_norm(params: dict[str, Tensor], name: str, layer: nn.LayerNorm, h: Tensor) -> Tensor:
    """The LayerNorm ``name`` (``layer``: its module, for the shape, eps and affine flags) of every
    member on ``h`` ``[M, ..., F]``: the normalization is per row as in one model; the members'
    own scale and shift are broadcast over the middle dimensions."""
    normed = F.layer_norm(h, layer.normalized_shape, eps=layer.eps)
    if not layer.elementwise_affine:
        return normed
    shape = (h.shape[0],) + (1,) * (h.dim() - 1 - len(layer.normalized_shape)) + tuple(layer.normalized_shape)
    weight = params[f"{name}.weight"].view(shape)
    bias = params.get(f"{name}.bias")
    return normed * weight if bias is None else torch.addcmul(bias.view(shape), normed, weight)


def _pool_before_relu(layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """``layers`` with each ReLU that a MaxPool2d follows moved after it: max commutes with ReLU
    (max_i max(x_i, 0) = max(max_i x_i, 0)), and the gradients agree too (both route to the
    window's argmax when it is positive and are 0 otherwise), so the output and every gradient
    are unchanged while ReLU and its backward touch a quarter of the entries (2×2 pooling)."""
    reordered = list(layers)
    for index in range(len(reordered) - 1):
        (_, first), (_, second) = reordered[index], reordered[index + 1]
        if type(first) is nn.ReLU and isinstance(second, nn.MaxPool2d):
            reordered[index], reordered[index + 1] = reordered[index + 1], reordered[index]
    return reordered


def _flat(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.flatten()


def _features(h: Tensor, layout: str, members: int, shared_input: bool) -> Tensor:
    """``h`` in the features layout ``[M, F, B]`` (``[F, B]`` for a shared input not yet split
    into members)."""
    if layout == "input":
        return h.flatten(1).T if shared_input else h.flatten(2).transpose(1, 2)
    if layout == "image":  # [B, M·C, H, W] -> [M, C·H·W, B]
        return h.reshape(h.shape[0], members, -1).permute(1, 2, 0)
    return h
