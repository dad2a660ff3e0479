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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

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
    ordered = _pool_before_relu(list(layers))
    index = 0
    while index < len(ordered):
        name, layer = ordered[index]
        index += 1
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
            if h.dim() == 2:  # the shared input, not yet per member: one product, the input broadcast
                # (flattening the members' weights to one [M·out, F] matrix would copy them: their rows
                # lie in the population's flat parameters; 54 µs instead of 72 on the digits MLP)
                weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
                shared = h.expand(members, *h.shape)
                h = torch.bmm(weight, shared) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, shared)
            else:  # this Linear and the Linears and activations that follow it: one linear chain
                run, index = linear_run(ordered, index - 1)
                h = linear_chain(params, run, h)
        elif isinstance(layer, ELEMENTWISE if layout == "features" else PER_CHANNEL) and layout != "input":
            h = layer(h)
        else:
            raise TypeError(f"{name}: {type(layer).__name__} has no population forward in the {layout} layout")
    if layout != "features" or h.dim() != 3:
        raise TypeError("a population forward ends with a Linear layer")
    return h.transpose(1, 2)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation of a linear chain: its forward, and its backward as autograd's own
    formula (``derivatives.yaml``), from the activation's output (``from_output``, then the forward may
    overwrite its input) or from its input."""

    forward: Callable[[Tensor], Tensor]
    backward: Callable[[Tensor, Tensor], Tensor]  # (gradient of the output, saved tensor) -> gradient of the input
    from_output: bool


def _relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    return torch.ops.aten.threshold_backward(grad, output, 0)


CHAIN_ACTIVATIONS: dict[type[nn.Module], Activation] = {
    nn.ReLU: Activation(torch.relu_, _relu_backward, True),
    nn.Tanh: Activation(torch.tanh_, torch.ops.aten.tanh_backward, True),
    nn.SiLU: Activation(F.silu, torch.ops.aten.silu_backward, False),
}
CHAIN_GELUS = {
    approximate: Activation(
        partial(F.gelu, approximate=approximate), partial(torch.ops.aten.gelu_backward, approximate=approximate), False
    )
    for approximate in ("none", "tanh")
}


def chain_activation(layer: nn.Module) -> Activation | None:
    """``layer``'s Activation, or None for a layer a linear chain does not take (dropout ends it)."""
    if type(layer) is nn.GELU:
        return CHAIN_GELUS[layer.approximate]
    return CHAIN_ACTIVATIONS.get(type(layer))


@dataclass(frozen=True)
class ChainLink:
    """One Linear of a linear chain (its parameters' name) and the activation after it, if any."""

    name: str
    activation: Activation | None


def linear_run(layers: list[tuple[str, nn.Module]], start: int) -> tuple[list[ChainLink], int]:
    """The Linears (each with the activation after it) from ``layers[start]`` on, up to the first
    other layer; and the index of that layer."""
    run, index = [], start
    while index < len(layers) and isinstance(layers[index][1], nn.Linear):
        name = layers[index][0]
        activation = chain_activation(layers[index + 1][1]) if index + 1 < len(layers) else None
        run.append(ChainLink(name, activation))
        index += 2 if activation is not None else 1
    return run, index


def linear_chain(params: dict[str, Tensor], run: list[ChainLink], h: Tensor) -> Tensor:
    """The Linears and activations of ``run`` on every member's features ``h`` ``[M, F, B]`` (the
    features layout), differentiated by :class:`LinearChainFunction`."""
    return LinearChainFunction.apply(h, tuple(link.activation for link in run), *chain_tensors(params, run))


def chain_tensors(params: dict[str, Tensor], run: list[ChainLink]) -> list[Tensor | None]:
    """Each Linear's weight ``[M, out, in]`` and bias ``[M, out]`` (None without), in chain order."""
    return [t for link in run for t in (params[f"{link.name}.weight"], params.get(f"{link.name}.bias"))]


def linear_chain_forward(
    h: Tensor, activations: tuple[Activation | None, ...], tensors: list[Tensor | None]
) -> tuple[Tensor, list[Tensor]]:
    """``h ← act_k(W_k·h + b_k)`` for k = 1..K on the features layout ``[M, F, B]``; returns the
    output and what :func:`linear_chain_backward` needs (each Linear's input, the pre-activations of
    activations differentiated from their input, the output when the last is differentiated from it).
    Activations differentiated from their output overwrite their input."""
    saved: list[Tensor] = []
    for k, activation in enumerate(activations):
        weight, bias = tensors[2 * k], tensors[2 * k + 1]
        saved.append(h)  # the Linear's input: its weight's gradient is grad · hᵀ
        h = torch.bmm(weight, h) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, h)  # type: ignore[arg-type]
        if activation is not None:
            if not activation.from_output:
                saved.append(h)
            h = activation.forward(h)
    if activations[-1] is not None and activations[-1].from_output:
        saved.append(h)
    return h, saved


def linear_chain_backward(
    grad: Tensor,
    activations: tuple[Activation | None, ...],
    tensors: list[Tensor | None],
    saved: list[Tensor],
    input_grad: bool,
) -> tuple[Tensor | None, list[Tensor | None]]:
    """The chain's backward from the gradient of its output: the gradient of its input (when
    ``input_grad``) and of each of ``tensors`` (None for a missing bias), as autograd would give them:
    its formulas (grad·hᵀ, Wᵀ·grad, the bias's sum over the batch, each activation's derivative), so
    the same numbers to float rounding. Consumes ``saved``."""
    grads: list[Tensor | None] = [None] * len(tensors)
    last = activations[-1]
    output = saved.pop() if last is not None and last.from_output else None
    for k in reversed(range(len(activations))):
        activation = activations[k]
        if activation is not None:
            # from its output (the next Linear's input, or the chain's output), else from its input
            grad = activation.backward(grad, output if activation.from_output else saved.pop())
        h = saved.pop()
        grads[2 * k] = torch.bmm(grad, h.transpose(1, 2))
        if tensors[2 * k + 1] is not None:
            grads[2 * k + 1] = grad.sum(dim=2)
        if k > 0 or input_grad:
            grad = torch.bmm(tensors[2 * k].transpose(1, 2), grad)  # type: ignore[union-attr]
        output = h
    return (grad if input_grad else None), grads


class LinearChainFunction(torch.autograd.Function):
    """The linear chain (:func:`linear_chain_forward`) as one autograd node, its backward written out
    (:func:`linear_chain_backward`).

    Why: on a CPU a small population's step is mostly per-operation cost, and autograd records a node
    per product and activation. First order only (``once_differentiable``): the population's metrics
    run on the single run's model (memexp/batched/population.py), never through this backward.

    Arguments: ``h``, the activations (one per Linear, None for none), then each Linear's weight
    ``[M, out, in]`` and bias ``[M, out]`` (or None)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, activations: tuple[Activation | None, ...], *tensors: Tensor | None) -> Tensor:
        out, saved = linear_chain_forward(h, activations, list(tensors))
        ctx.activations, ctx.saved_count = activations, len(saved)
        ctx.biases = [t is not None for t in tensors[1::2]]
        ctx.save_for_backward(*saved, *(t for t in tensors if t is not None))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        stored = list(ctx.saved_tensors)
        saved, present = stored[: ctx.saved_count], iter(stored[ctx.saved_count :])
        tensors = [next(present) if k % 2 == 0 or ctx.biases[k // 2] else None for k in range(2 * len(ctx.biases))]
        grad_h, grads = linear_chain_backward(grad, ctx.activations, tensors, saved, ctx.needs_input_grad[0])
        return grad_h, None, *grads


def linear_chain_from_input(layers: list[tuple[str, nn.Module]]) -> list[ChainLink] | None:
    """The chain as one linear chain on its flattened input (Linears and activations only: the MLP
    without dropout, the deep linear network), or None."""
    start = 1 if layers and isinstance(layers[0][1], nn.Flatten) else 0
    run, end = linear_run(layers, start)
    return run if run and end == len(layers) else None


LossAndGradient = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@torch.no_grad()
def linear_chain_gradients(
    params: dict[str, Tensor],
    run: list[ChainLink],
    x: Tensor,
    target: Tensor,
    loss_and_gradient: LossAndGradient,
    gradients: dict[str, Tensor],
) -> Tensor:
    """Each member's loss ``[M]`` on its own batch ``x`` ``[M, B, ...]`` (a model that is the linear
    chain ``run`` on its flattened input), and the gradients of their sum written into ``gradients``
    (by parameter name): the forward and the backward written out, no autograd graph at all.

    ``loss_and_gradient(output, target)``: the losses ``[M]`` and their sum's gradient with respect to
    ``output`` ``[M, B, out]`` (memexp.tasks.Task.member_loss_and_gradient). For 16 members of the
    digits MLP a forward and backward took 0.86 ms this way, 1.2 ms through autograd (same machine,
    side by side): with a few dozen operations a step, autograd's bookkeeping is a third of it."""
    activations = tuple(link.activation for link in run)
    tensors = chain_tensors(params, run)
    output, saved = linear_chain_forward(x.flatten(2).transpose(1, 2), activations, tensors)
    losses, grad = loss_and_gradient(output.transpose(1, 2), target)
    _, grads = linear_chain_backward(grad.transpose(1, 2), activations, tensors, saved, input_grad=False)
    for link, weight, bias in zip(run, grads[0::2], grads[1::2]):
        gradients[f"{link.name}.weight"].copy_(weight)  # type: ignore[arg-type]
        if bias is not None:
            gradients[f"{link.name}.bias"].copy_(bias)
    return losses


class ChainPopulationForward:
    """Mixin for models that are a plain chain of layers (nested ``nn.Sequential``s, forward = their
    composition): gives them the batched launcher's ``population_forward``."""

    def population_forward(self, params: dict[str, Tensor], x: Tensor, shared_input: bool = False) -> Tensor:
        """M members' outputs at once from their stacked parameters (:func:`chain_population_forward`)."""
        assert isinstance(self, nn.Module)
        # The chain's layers, listed once: walking the modules costs a small population's step ~3%.
        layers = self.__dict__.get("_population_chain")
        if layers is None:
            layers = self.__dict__["_population_chain"] = chain_layers(self)
        return chain_population_forward(layers, params, x, shared_input)

    def population_linear_chain(self) -> list[ChainLink] | None:
        """The model as one linear chain on its flattened input (:func:`linear_chain_gradients`
        trains it without autograd), or None."""
        assert isinstance(self, nn.Module)
        return linear_chain_from_input(chain_layers(self))


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
