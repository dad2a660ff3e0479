"""memexp.models.population: M members' forward at once equals each member's own forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from memexp.models.cnn import CNN
from memexp.models.deep_linear import DeepLinear
from memexp.models.gpt import GPT
from memexp.models.mlp import MLP
from memexp.models.population import ChainLink, chain_activation, chain_layers, chain_population_forward, linear_chain
from memexp.models.vit import VisionTransformer

MEMBERS = 4
CASES = {
    "mlp_relu": (lambda: MLP(64, [32, 16], 10, "relu", 0.0), (1, 8, 8)),
    "mlp_gelu": (lambda: MLP(12, [8], 3, "gelu", 0.0), (12,)),
    "mlp_tanh": (lambda: MLP(12, [8, 8], 3, "tanh", 0.0), (12,)),
    "mlp_silu": (lambda: MLP(12, [8, 8], 3, "silu", 0.0), (12,)),
    "cnn_digits": (lambda: CNN(1, 8, [8, 16], 10, False, 0.0), (1, 8, 8)),
    "cnn_rgb": (lambda: CNN(3, 16, [4, 8, 8], 5, False, 0.0), (3, 16, 16)),
    "deep_linear": (lambda: DeepLinear(12, 3, 3, 8, 1.0), (12,)),
    "vit_cls": (lambda: VisionTransformer(1, 8, 2, 10, 12, 2, 3), (1, 8, 8)),
    "vit_mean_rgb_no_qkv_bias": (lambda: VisionTransformer(3, 8, 4, 5, 8, 1, 2, 2.0, "mean", False), (3, 8, 8)),
}


def stacked(make) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    models = [make().double() for _ in range(MEMBERS)]
    params, _ = stack_module_state(models)
    return models[0], params


def each_member(base: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
    return torch.stack(
        [
            functional_call(base, {name: p[m] for name, p in params.items()}, (x if shared else x[m],))
            for m in range(MEMBERS)
        ]
    )


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_and_gradients_equal_each_members_own_forward(case: str) -> None:
    make, shape = CASES[case]
    base, params = stacked(make)
    x = torch.randn(MEMBERS, 6, *shape, dtype=torch.float64)
    target = torch.randn(MEMBERS, 6, base.population_forward(params, x).shape[-1], dtype=torch.float64)
    output = base.population_forward(params, x)
    expected = each_member(base, params, x, shared=False)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    # Gradients (ReLU moved after max-pooling included): float64, so only the order of sums differs.
    got = torch.autograd.grad((output * target).sum(), list(params.values()))
    want = torch.autograd.grad((expected * target).sum(), list(params.values()))
    for name, a, b in zip(params, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_a_shared_input_gives_every_member_its_output_on_it(case: str) -> None:
    make, shape = CASES[case]
    base, params = stacked(make)
    x = torch.randn(7, *shape, dtype=torch.float64)
    torch.testing.assert_close(
        base.population_forward(params, x, shared_input=True),
        each_member(base, params, x, shared=True),
        rtol=1e-12,
        atol=1e-12,
    )


def test_relu_then_max_pool_ties_route_the_gradient_as_the_model_does() -> None:
    """All-negative windows (ReLU ties at 0) and tied maxima: the reordered chain's gradient equals
    the model's, entry for entry."""
    conv = nn.Conv2d(1, 2, 1).double()
    chain = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 1).double())
    params = {name: p.detach().unsqueeze(0).clone().requires_grad_(True) for name, p in chain.named_parameters()}
    x = torch.tensor([[-1.0, -2.0, 3.0, 3.0], [-4.0, -1.0, 0.5, 3.0]], dtype=torch.float64).view(1, 1, 1, 2, 4)
    x = torch.cat([x, x], dim=3)
    out = chain_population_forward(chain_layers(chain), params, x)
    got = torch.autograd.grad(out.sum(), list(params.values()))
    reference = {name: p.detach()[0].clone().requires_grad_(True) for name, p in params.items()}
    want = torch.autograd.grad(functional_call(chain, reference, (x[0],)).sum(), list(reference.values()))
    for a, b in zip(got, want):
        assert torch.equal(a[0], b)


DROPOUT_CASES = {
    "mlp": (lambda: MLP(16, [256], 2, "relu", 0.5), (16,)),
    "vit_dropout": (lambda: VisionTransformer(1, 4, 2, 2, 8, 1, 2, dropout=0.5), (1, 4, 4)),
    "vit_attention_dropout": (lambda: VisionTransformer(1, 4, 2, 2, 8, 1, 2, attention_dropout=0.5), (1, 4, 4)),
    "gpt_dropout": (lambda: GPT(11, 4, 1, 2, 8, dropout=0.5), (4,)),
}


@pytest.mark.parametrize("case", list(DROPOUT_CASES))
def test_dropout_draws_a_mask_per_member(case: str) -> None:
    make, shape = DROPOUT_CASES[case]
    base, params = stacked(make)
    same = {name: p[:1].expand(MEMBERS, *p.shape[1:]) for name, p in params.items()}  # one member, 4 times
    x = torch.randint(0, 11, (10, *shape)) if isinstance(base, GPT) else torch.randn(10, *shape, dtype=torch.float64)
    out = base.population_forward(same, x, shared_input=True)
    assert not torch.equal(out[0], out[1])
    base.eval()
    out = base.population_forward(same, x, shared_input=True)
    torch.testing.assert_close(out[0], out[1], rtol=1e-13, atol=1e-13)


def test_a_layer_without_a_population_forward_is_refused() -> None:
    chain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 1))
    params, _ = stack_module_state([chain, chain])
    with pytest.raises(TypeError, match="BatchNorm2d has no population forward in the image layout"):
        chain_population_forward(chain_layers(chain), params, torch.randn(2, 3, 1, 3, 3))


def test_grouped_convolutions_per_member_and_on_a_shared_input() -> None:
    base, params = stacked(
        lambda: nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(150, 3))
    )
    params = {name: p + 0.01 * torch.randn_like(p) for name, p in params.items()}  # distinct members
    x = torch.randn(MEMBERS, 2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(
        chain_population_forward(chain_layers(base), params, x),
        each_member(base, params, x, shared=False),
        rtol=1e-12,
        atol=1e-12,
    )
    shared = x[0]
    torch.testing.assert_close(
        chain_population_forward(chain_layers(base), params, shared, shared_input=True),
        each_member(base, params, shared, shared=True),
        rtol=1e-12,
        atol=1e-12,
    )


def test_a_convolution_padding_other_than_zeros_is_refused() -> None:
    chain = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(18, 1))
    params, _ = stack_module_state([chain, chain])
    with pytest.raises(TypeError, match="padding_mode='reflect'"):
        chain_population_forward(chain_layers(chain), params, torch.randn(2, 1, 1, 3, 3))


@pytest.mark.parametrize("tie_weights", [True, False])
def test_a_gpt_population_equals_each_members_own_forward(tie_weights: bool) -> None:
    """Token blocks instead of images: each member looks its tokens up in its own embedding rows;
    tied weights are stacked once (under wte.weight) and serve as the head too."""
    base, params = stacked(lambda: GPT(11, 8, 2, 2, 8, tie_weights=tie_weights))
    assert ("lm_head.weight" in params) is not tie_weights
    idx = torch.randint(0, 11, (MEMBERS, 3, 6))
    output = base.population_forward(params, idx)
    expected = each_member(base, params, idx, shared=False)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    target = torch.randn_like(output)
    got = torch.autograd.grad((output * target).sum(), list(params.values()))
    want = torch.autograd.grad((expected * target).sum(), list(params.values()))
    for name, a, b in zip(params, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    shared = torch.randint(0, 11, (5, 8))
    torch.testing.assert_close(
        base.population_forward(params, shared, shared_input=True),
        each_member(base, params, shared, shared=True),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "activations",
    [(nn.ReLU(), nn.ReLU(), None), (nn.Tanh(), nn.GELU("tanh"), None), (nn.GELU(), nn.SiLU(), nn.Tanh()), (None,)],
    ids=["relu", "tanh_gelu_tanh", "gelu_silu_ending_in_tanh", "one_linear"],
)
@pytest.mark.parametrize("bias", [True, False])
def test_the_linear_chains_written_out_backward_passes_gradcheck(activations: tuple, bias: bool) -> None:
    """The linear chain's hand-written backward against finite differences (float64), for the
    input and every weight and bias, each activation also at the chain's end."""
    torch.manual_seed(0)
    sizes = [5, 4, 6, 3][: len(activations) + 1]
    run = [ChainLink(f"l{k}", None if a is None else chain_activation(a)) for k, a in enumerate(activations)]
    params = {}
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"l{k}.weight"] = torch.randn(2, fan_out, fan_in, dtype=torch.float64, requires_grad=True)
        if bias:
            params[f"l{k}.bias"] = torch.randn(2, fan_out, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, sizes[0], 7, dtype=torch.float64, requires_grad=True)
    names = list(params)

    def chain(h: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        return linear_chain(dict(zip(names, tensors)), run, h)

    assert torch.autograd.gradcheck(chain, (h, *params.values()))


def test_only_a_model_that_is_one_linear_chain_trains_without_autograd() -> None:
    """linear_chain_from_input: the MLP (a Flatten, then Linears and activations) and the deep linear
    network are one chain; dropout ends a chain, and a convolution is not one."""
    mlp = MLP(12, [8, 8], 3, "tanh", 0.0).population_linear_chain()
    assert mlp is not None and [link.name for link in mlp] == ["net.1", "net.3", "net.5"]
    assert [link.activation is not None for link in mlp] == [True, True, False]
    deep = DeepLinear(12, 3, 3, 8, 1.0).population_linear_chain()
    assert deep is not None and [link.activation for link in deep] == [None, None, None]
    assert MLP(12, [8], 3, "relu", 0.5).population_linear_chain() is None
    assert CNN(1, 8, [8, 16], 10, False, 0.0).population_linear_chain() is None
