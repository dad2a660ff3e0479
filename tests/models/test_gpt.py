"""GPT: causality, weight tying, GPT-2 sizes and init, attention against a float64 reference."""

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
from memexp.models.gpt import GPT, CausalSelfAttention

CONF = str(Path(__file__).resolve().parents[2] / "conf")
BYTES_256 = DataSpec("stdlib_text", "lm", (256,), 256)


def compose_train(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def preset(name: str):
    model_cfg = OmegaConf.to_object(compose_train(f"model={name}").model)
    model_cfg.check()
    return model_cfg


def gpt_parameter_count(vocab: int, block: int, layers: int, dim: int) -> int:
    """Closed form with tied weights and biases everywhere (GPT-2)."""
    per_layer = (
        2 * (2 * dim)
        + (dim * 3 * dim + 3 * dim)
        + (dim * dim + dim)
        + (dim * 4 * dim + 4 * dim)
        + (4 * dim * dim + dim)
    )
    return vocab * dim + block * dim + layers * per_layer + 2 * dim


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def test_gpt_small_with_the_gpt2_vocabulary_is_gpt2_small():
    cfg = preset("gpt_small")
    with torch.device("meta"):
        model = MODELS.build("gpt", cfg, DataSpec("owt", "lm", (1024,), 50257))
    assert count(model) == 124_439_808 == gpt_parameter_count(50257, 1024, 12, 768)  # GPT-2 small's published size


@pytest.mark.parametrize(
    ("name", "documented", "layers", "dim"),
    [
        ("gpt_nano", 109_488, 3, 48),
        ("gpt_mini", 2_767_872, 6, 192),
        ("gpt", 109_488, 3, 48),
        ("gpt_small", 85_449_216, 12, 768),
    ],
)
def test_preset_parameter_counts_with_byte_tokens(name, documented, layers, dim):
    cfg = preset(name)
    assert (cfg.n_layer, cfg.n_embd) == (layers, dim)
    with torch.device("meta"):
        model = MODELS.build("gpt", cfg, BYTES_256)
    assert count(model) == documented == gpt_parameter_count(256, 256, layers, dim)


def test_model_gpt_switches_the_data_default_to_offline_text_but_the_command_line_wins():
    assert compose_train("model=gpt").data.name == "stdlib_text"
    assert compose_train("model=gpt_nano").data.name == "stdlib_text"
    assert compose_train("model=gpt", "data=shakespeare_char").data.name == "text_file"
    assert compose_train("model=mlp").data.name == "digits"


def tiny_gpt(**kwargs) -> GPT:
    torch.manual_seed(0)
    defaults = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    return GPT(**{**defaults, **kwargs})


def test_changing_a_future_token_never_changes_earlier_logits():
    model = tiny_gpt().double().eval()
    idx = torch.randint(0, 11, (3, 8))
    logits = model(idx)
    assert logits.shape == (3, 8, 11)
    for t in range(7):
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % 11
        new_logits = model(changed)
        torch.testing.assert_close(new_logits[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-12)
        assert (new_logits[:, t + 1] - logits[:, t + 1]).abs().max() > 1e-6  # and the changed position does change


def test_causal_attention_matches_a_masked_float64_softmax():
    torch.manual_seed(2)
    attention = CausalSelfAttention(n_embd=12, n_head=3, dropout=0.0, bias=True).double()
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    q, k, v = attention.c_attn(x).split(12, dim=-1)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    outs = []
    for h in range(3):
        head = slice(4 * h, 4 * h + 4)
        scores = (q[..., head] @ k[..., head].transpose(1, 2) / 2.0).masked_fill(~mask, float("-inf"))
        outs.append(torch.softmax(scores, dim=-1) @ v[..., head])
    torch.testing.assert_close(attention(x), attention.c_proj(torch.cat(outs, dim=-1)), rtol=1e-10, atol=1e-12)


def test_weights_are_tied_and_both_uses_receive_gradient():
    model = tiny_gpt()
    assert model.lm_head.weight is model.wte.weight
    assert count(model) == gpt_parameter_count(11, 8, 2, 16)
    untied = tiny_gpt(tie_weights=False)
    assert count(untied) == count(model) + 11 * 16
    idx = torch.randint(0, 11, (2, 8))
    torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_gpt2_initialisation_scales_residual_projections_by_depth():
    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=16, n_layer=8, n_head=4, n_embd=256)
    projections = torch.cat(
        [b.attn.c_proj.weight.flatten() for b in model.blocks] + [b.mlp.c_proj.weight.flatten() for b in model.blocks]
    )
    others = torch.cat([b.attn.c_attn.weight.flatten() for b in model.blocks] + [model.wte.weight.flatten()])
    # 2.6M and 1.6M samples: the sample std is within 0.5% of the target with overwhelming probability.
    assert projections.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=5e-3)
    assert others.std().item() == pytest.approx(0.02, rel=5e-3)
    assert all((b.attn.c_attn.bias == 0).all() for b in model.blocks)


def test_block_size_and_vocabulary_follow_the_data():
    cfg = preset("gpt_nano")
    model = MODELS.build("gpt", cfg, DataSpec("text", "lm", (32,), 65))
    assert model.block_size == 32 and model.wte.num_embeddings == 65
    cfg.block_size, cfg.vocab_multiple = 64, 64
    model = MODELS.build("gpt", cfg, DataSpec("text", "lm", (32,), 65))
    assert model.block_size == 64 and model(torch.zeros(1, 32, dtype=torch.long)).shape == (1, 32, 128)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))
    cfg.block_size = 16
    with pytest.raises(ConfigValueError, match="model.block_size"):
        MODELS.build("gpt", cfg, DataSpec("text", "lm", (32,), 65))
    with pytest.raises(ConfigValueError, match="data=stdlib_text"):
        MODELS.build("gpt", preset("gpt_nano"), DataSpec("digits", "classification", (1, 8, 8), 10))
