"""The exact Hessian-diagonal path of R_med: one tensor's Hessian block (TensorHessian) against a dense
float64 Hessian, on a tanh net and on a tiny GPT (attention, LayerNorm, tied embedding / head)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from memexp.config import MetricsConfig, MetricsTier, RMedMethod
from memexp.metrics import compute_metrics, curvature
from memexp.metrics.block_hvp import HessianOperator, ProbeLoss, TensorHessian, curvature_mode, split_batch
from memexp.metrics.probe import tensor_hutchinson
from memexp.models.gpt import GPT
from tests.metrics.metrics_helpers import dense_hessian, tiny_data, tiny_net

CPU = torch.device("cpu")


def dense_blocks(model: torch.nn.Module, hessian: Tensor) -> dict[str, Tensor]:
    """Each parameter's diagonal block of the dense Hessian (flat parameter order)."""
    blocks, offset = {}, 0
    for name, p in model.named_parameters():
        blocks[name] = hessian[offset : offset + p.numel(), offset : offset + p.numel()]
        offset += p.numel()
    return blocks


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def tiny_gpt() -> tuple[GPT, tuple[Tensor, Tensor]]:
    """1 layer, 2 heads, width 8, 11 tokens, tied embedding / head: 1,100 parameters, float64."""
    torch.manual_seed(0)
    model = GPT(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8, dropout=0.0, bias=True).double()
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 11, (5, 7), generator=generator)
    return model, (tokens[:, :-1], tokens[:, 1:])


def test_tensor_hessian_block_equals_the_dense_float64_hessian_block_on_a_tanh_net() -> None:
    model, (x, y) = tiny_net(), tiny_data()
    hessian = dense_hessian(model, F.cross_entropy, x, y)
    # Two chunks: the block must be the Hessian of the example-weighted mean over the whole probe set.
    operator = HessianOperator(ProbeLoss(model, F.cross_entropy, [(x[:5], y[:5]), (x[5:], y[5:])]), "autodiff")
    generator = torch.Generator().manual_seed(0)
    for index, block in enumerate(dense_blocks(model, hessian).values()):
        tensor = TensorHessian(operator, index)
        vectors = torch.randn(block.shape[0], 3, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(tensor.matmat(vectors), block @ vectors, rtol=1e-10, atol=1e-12)
        diagonal = curvature.exact_diagonal_slice(tensor.matmat, tensor.dim, 0, tensor.dim, CPU, torch.float64, 2)
        torch.testing.assert_close(diagonal, block.diagonal(), rtol=1e-10, atol=1e-12)
    assert operator.matvecs == sum(3 + p.numel() for p in model.parameters())  # every product counted


def test_tensor_hessian_diagonals_of_a_tiny_gpt_equal_the_dense_float64_hessian() -> None:
    model, (x, y) = tiny_gpt()
    with curvature_mode(model):
        hessian = dense_hessian(model, token_loss, x, y)
        probe = ProbeLoss(model, token_loss, split_batch(x, y, 2))
        operator = HessianOperator(probe, "autodiff", max_columns=7)
        blocks = dense_blocks(model, hessian)
        assert "wte.weight" in blocks and model.lm_head.weight is model.wte.weight  # tied: both uses count
        for index, name in enumerate(probe.names):
            tensor = TensorHessian(operator, index)
            diagonal = curvature.exact_diagonal_slice(tensor.matmat, tensor.dim, 0, tensor.dim, CPU, torch.float64)
            torch.testing.assert_close(diagonal, blocks[name].diagonal(), rtol=1e-9, atol=1e-12)
    # Through compute_metrics (the path metrics.r_med_method=exact takes): R_med of the dense diagonals.
    cfg = MetricsConfig(
        every=1, tier=MetricsTier.economy, include=["r_med"], r_med_method=RMedMethod.exact, exact_diag_max_numel=0
    )
    out = compute_metrics(model, token_loss, (x, y), torch.optim.SGD(model.parameters(), lr=0.1), cfg)
    for name in ("blocks.0.attn.c_proj.weight", "blocks.0.mlp.c_fc.weight", "wte.weight", "ln_f.bias"):
        assert out[f"geom/r_med/{name}"] == pytest.approx(curvature.r_med(blocks[name].diagonal()).value, rel=1e-9)
    assert out["geom/r_med_hvp_count"] == hessian.shape[0]


def test_a_tensor_the_loss_is_linear_in_has_a_zero_block() -> None:
    # L = mean(w . x): linear in w, so H_ww = 0 (its gradient does not depend on w).
    model = torch.nn.Linear(4, 1, bias=False).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    probe = ProbeLoss(model, lambda output, target: output.mean(), [(x, torch.zeros(6))])
    tensor = TensorHessian(HessianOperator(probe, "autodiff"), 0)
    assert torch.equal(tensor.matmat(torch.eye(4, dtype=torch.float64)), torch.zeros(4, 4, dtype=torch.float64))


def test_per_tensor_hutchinson_uses_the_tensor_block_with_the_full_operators_numbers() -> None:
    """hutchinson_per_tensor's probes are zero outside the tensor: through the tensor's own block
    (TensorHessian) they give the full operator's estimate (same seeded probes), and on a tensor
    whose block is the dense float64 one, the probe mean of z·Hz converges to its diagonal."""
    model, (x, y) = tiny_gpt()
    with curvature_mode(model):
        hessian = dense_hessian(model, token_loss, x, y)
        probe = ProbeLoss(model, token_loss, split_batch(x, y, 2))
        operator = HessianOperator(probe, "autodiff", max_columns=16)
        cfg = MetricsConfig(
            every=1,
            tier=MetricsTier.economy,
            include=["r_med"],
            r_med_method=RMedMethod.hutchinson_per_tensor,
            hutchinson_probes=64,
            exact_diag_max_numel=0,
        )
        blocks, offset = dense_blocks(model, hessian), 0
        for index, (name, param) in enumerate(zip(probe.names, probe.params)):
            start, stop = offset, offset + param.numel()
            offset = stop
            found = tensor_hutchinson(operator, cfg, None, index, start, stop, None)
            seed = cfg.seed * 1_000_003 + index + 1
            full = curvature.hutchinson(operator.matmat, probe.dim, CPU, torch.float64, 64, seed, 16, 0, (start, stop))
            torch.testing.assert_close(found.diagonal, full.diagonal, rtol=1e-9, atol=1e-12)
            dense = blocks[name]
            generator = curvature.seeded_generator(seed, CPU)
            z = curvature.rademacher((64, dense.shape[0]), generator, CPU, torch.float64).T
            torch.testing.assert_close(found.diagonal, (z * (dense @ z)).mean(dim=1), rtol=1e-9, atol=1e-12)
