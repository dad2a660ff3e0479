"""A GPT-2 style causal language model in one file, after nanoGPT's model.py.

Token + learned position embeddings, pre-norm blocks (LayerNorm -> causal
``F.scaled_dot_product_attention`` -> residual, LayerNorm -> 4x GELU MLP -> residual), a final
LayerNorm and an output layer that shares its weight with the token embedding (weight tying).
GPT-2 initialisation: N(0, 0.02) everywhere, and N(0, 0.02 / sqrt(2 * n_layer)) for the projections
that write into the residual stream, so the residual's variance does not grow with depth.

The vocabulary size and the block size come from the dataset's :class:`DataSpec` (``num_classes``,
``input_shape == (block_size,)``); ``block_size`` in the config may be larger (a longer position
table), never smaller. The forward pass returns logits for every position, (batch, time, vocab),
which is what the "lm" task's token cross-entropy reads.

Parameter counts (tied weights counted once, position table included), checked in
tests/models/test_gpt.py: with the GPT-2 BPE (50,257 tokens) and 1,024 positions, gpt_small is GPT-2
small's 124,439,808; with byte tokens (256) and 256 positions (data=stdlib_text): gpt_nano 109,488,
gpt_mini 2,767,872, gpt_small 85,449,216.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memexp.data.base import DataSpec
from memexp.errors import ConfigValueError, require
from memexp.models.population import member_layer_norm, member_linear
from memexp.models.registry import MODELS, ModelConfig


@dataclass
class GPTConfig(ModelConfig):
    name: str = "gpt"
    n_layer: int = 3
    n_head: int = 3
    n_embd: int = 48
    block_size: int = 0  # 0: the dataset's block size
    dropout: float = 0.0
    bias: bool = True  # biases in linear layers and LayerNorms, as GPT-2
    tie_weights: bool = True
    vocab_multiple: int = 1  # pad the vocabulary up to a multiple (64 turns 50257 into 50304: faster matmuls)

    def check(self) -> None:
        require(self.n_layer > 0, "n_layer", self.n_layer, "an integer > 0")
        require(self.n_embd > 0, "n_embd", self.n_embd, "an integer > 0")
        require(
            self.n_head > 0 and self.n_embd % self.n_head == 0,
            "n_head",
            self.n_head,
            f"a positive divisor of n_embd={self.n_embd}",
        )
        require(self.block_size >= 0, "block_size", self.block_size, "an integer > 0, or 0 for the data's")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        require(self.vocab_multiple > 0, "vocab_multiple", self.vocab_multiple, "an integer > 0")


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, time, channels = x.shape
        q, k, v = self.c_attn(x).split(channels, dim=2)
        q, k, v = (t.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.c_proj(out.transpose(1, 2).reshape(batch, time, channels)))

    def population_forward(self, params: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
        """:meth:`forward` of M members at once: ``x`` ``[M, B, T, C]``; attention on the M·B sequences."""
        members, batch, time, channels = x.shape
        q, k, v = member_linear(params, f"{prefix}c_attn", x).split(channels, dim=3)
        heads = self.n_head
        q, k, v = (t.reshape(members * batch, time, heads, channels // heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        out = out.transpose(1, 2).reshape(members, batch, time, channels)
        return self.resid_dropout(member_linear(params, f"{prefix}c_proj", out))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    def population_forward(self, params: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
        hidden = self.gelu(member_linear(params, f"{prefix}c_fc", x))
        return self.dropout(member_linear(params, f"{prefix}c_proj", hidden))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def population_forward(self, params: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
        x = x + self.attn.population_forward(
            params, f"{prefix}attn.", member_layer_norm(params, f"{prefix}ln_1", self.ln_1, x)
        )
        return x + self.mlp.population_forward(
            params, f"{prefix}mlp.", member_layer_norm(params, f"{prefix}ln_2", self.ln_2, x)
        )


class GPT(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        bias: bool = True,
        tie_weights: bool = True,
    ):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters(n_layer)

    def reset_parameters(self, n_layer: int) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: Tensor) -> Tensor:
        time = idx.shape[1]
        if time > self.block_size:
            raise ValueError(f"sequence length {time} exceeds the model's block_size {self.block_size}")
        positions = torch.arange(time, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def population_forward(self, params: dict[str, Tensor], idx: Tensor, shared_input: bool = False) -> Tensor:
        """Every member's logits ``[M, B, T, vocab]`` from the members' stacked parameters (``[M, ...]``
        per name; tied weights once, under ``wte.weight``) on their own token blocks ``idx``
        ``[M, B, T]`` (or, with ``shared_input``, one ``[B, T]`` for all): the batched launcher's
        forward (memexp/batched/population.py). Each Linear is one batched product over the members,
        attention runs on the M·B sequences, and each member looks its tokens up in its own rows of
        the stacked embedding table. Equal to each member's :meth:`forward` to float rounding
        (tests/models/test_population.py)."""
        table = params["wte.weight"]
        members, vocab = table.shape[0], table.shape[1]
        if shared_input:
            idx = idx.expand(members, *idx.shape)
        time = idx.shape[-1]
        if time > self.block_size:
            raise ValueError(f"sequence length {time} exceeds the model's block_size {self.block_size}")
        # Member m's token t is row m·vocab + t of the flattened [M·vocab, C] table.
        offsets = torch.arange(members, device=idx.device).mul_(vocab).view(members, 1, 1)
        x = F.embedding(idx + offsets, table.flatten(0, 1))
        x = self.drop(x + params["wpe.weight"][:, :time].unsqueeze(1))
        for index, block in enumerate(self.blocks):
            x = block.population_forward(params, f"blocks.{index}.", x)
        x = member_layer_norm(params, "ln_f", self.ln_f, x)
        head = params.get("lm_head.weight", table)  # tied: the embedding table
        return member_linear({"lm_head.weight": head}, "lm_head", x)


@MODELS.register("gpt", config=GPTConfig)
def build_gpt(cfg: GPTConfig, spec: DataSpec) -> GPT:
    if spec.task != "lm" or len(spec.input_shape) != 1:
        raise ConfigValueError(
            "model",
            "gpt",
            f"a language-modelling dataset (data={spec.name} is {spec.task}): "
            "use data=stdlib_text (offline), data=text_file data.path=... or data=hf_text",
        )
    data_block = spec.input_shape[0]
    block_size = cfg.block_size or data_block
    require(
        block_size >= data_block,
        "model.block_size",
        cfg.block_size,
        f"0 or an integer >= the data's block size {data_block}",
    )
    vocab = math.ceil(spec.num_classes / cfg.vocab_multiple) * cfg.vocab_multiple
    return GPT(vocab, block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout, cfg.bias, cfg.tie_weights)
