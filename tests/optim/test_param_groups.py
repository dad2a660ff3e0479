"""No weight decay on biases, norm weights and embeddings (configurable), tied weights once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memexp.optim import param_groups_weight_decay


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.pos = nn.Parameter(torch.zeros(1, 3, 4))
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied, as in GPT

    def no_weight_decay(self) -> set[str]:
        return {"pos"}


def names_in(groups, model: nn.Module) -> list[set[str]]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [{by_id[id(p)] for p in group["params"]} for group in groups]


def test_default_excludes_bias_norm_embedding() -> None:
    model = Tiny()
    groups = param_groups_weight_decay(model, 0.1, ["bias", "norm", "embedding"])
    decay, no_decay = names_in(groups, model)
    assert decay == {"proj.weight"}
    assert no_decay == {"embed.weight", "pos", "norm.weight", "norm.bias", "proj.bias"}
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # tied weight once


def test_categories_are_configurable() -> None:
    model = Tiny()
    decay, no_decay = names_in(param_groups_weight_decay(model, 0.1, ["bias"]), model)
    assert no_decay == {"norm.bias", "proj.bias"}
    assert {"embed.weight", "norm.weight", "proj.weight", "pos"} == decay
    [everything] = names_in(param_groups_weight_decay(model, 0.1, []), model)
    assert len(everything) == 6
    [no_decay_needed] = param_groups_weight_decay(model, 0.0, ["bias"])
    assert len(no_decay_needed["params"]) == 6 and no_decay_needed["weight_decay"] == 0.0
    decay, no_decay = names_in(param_groups_weight_decay(model, 0.1, ["1d"]), model)
    assert no_decay == {"norm.weight", "norm.bias", "proj.bias"}


def test_frozen_parameters_are_left_out() -> None:
    model = Tiny()
    model.proj.weight.requires_grad_(False)
    groups = param_groups_weight_decay(model, 0.1, ["bias"])
    assert all(p.requires_grad for g in groups for p in g["params"])


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_builders_apply_group_weight_decay(name: str) -> None:
    from memexp.optim import OPTIMIZERS

    entry = OPTIMIZERS.get(name)
    cfg = entry.config(lr=0.5, weight_decay=0.2)
    model = Tiny()
    optimizer = entry.builder(param_groups_weight_decay(model, cfg.weight_decay, cfg.no_decay), cfg)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.0]
    assert all(g["lr"] == 0.5 for g in optimizer.param_groups)
