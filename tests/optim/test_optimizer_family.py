"""Properties every optimizer of the family shares: foreach == per-tensor, exact state_dict
resume, diagnostics, registry/config wiring, and an end-to-end `memexp train` run."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from memexp.optim import (
    OPTIMIZERS,
    AdaptiveMemoryAdamW,
    AdaptiveMemorySGD,
    Lion,
    LionK,
    MemorylessAdamW,
    MemorylessLion,
    MemorylessSGD,
    ProjectedAdam,
)
from tests.optim.problems import mlp_closure, small_mlp

# name -> factory(param_groups, foreach); hyperparameters chosen so every code path is active.
FACTORIES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "lion": lambda g, f: Lion(g, lr=1e-2, betas=(0.9, 0.99), foreach=f),
    "lion_k_l2": lambda g, f: LionK(g, lr=1e-2, kernel="l2", foreach=f),
    "lion_k_linf": lambda g, f: LionK(g, lr=1e-2, kernel="linf", foreach=f),
    "lion_k_softsign": lambda g, f: LionK(g, lr=1e-2, kernel="softsign", delta=0.01, foreach=f),
    "lion_k_quadratic": lambda g, f: LionK(g, lr=1e-2, kernel="quadratic", foreach=f),
    "sgd_memoryless": lambda g, f: MemorylessSGD(g, lr=0.05, momentum=0.9, foreach=f),
    "sgd_memoryless_central": lambda g, f: MemorylessSGD(g, lr=0.05, momentum=0.9, hvp="central", foreach=f),
    "adamw_memoryless": lambda g, f: MemorylessAdamW(g, lr=1e-3, betas=(0.9, 0.99), eps=1e-3, foreach=f),
    "lion_memoryless": lambda g, f: MemorylessLion(g, lr=1e-3, foreach=f),
    "am_sgd": lambda g, f: AdaptiveMemorySGD(g, lr=0.05, foreach=f),
    "am_sgd_per_tensor": lambda g, f: AdaptiveMemorySGD(g, lr=0.05, scope="per_tensor", foreach=f),
    "am_sgd_carried": lambda g, f: AdaptiveMemorySGD(g, lr=0.05, offset="carried", foreach=f),
    "am_adamw": lambda g, f: AdaptiveMemoryAdamW(g, lr=1e-2, foreach=f),
    "am_adamw_global_carried": lambda g, f: AdaptiveMemoryAdamW(
        g, lr=1e-2, scope="global", offset="carried", foreach=f
    ),
}


def two_groups(model: nn.Module) -> list[dict]:
    """Weights with decay 0.1, biases without: per-group hyperparameters are exercised."""
    return [
        {"params": [p for n, p in model.named_parameters() if n.endswith("weight")], "weight_decay": 0.1},
        {"params": [p for n, p in model.named_parameters() if n.endswith("bias")], "weight_decay": 0.0, "lr": 3e-3},
    ]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, closure, steps: int) -> None:
    for _ in range(steps):
        optimizer.step(closure)
        closure.advance()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_foreach_path_equals_per_tensor_path(name: str) -> None:
    models = [small_mlp(), small_mlp()]
    optimizers = [FACTORIES[name](two_groups(m), foreach) for m, foreach in zip(models, (True, False))]
    closures = [mlp_closure(m) for m in models]
    for _ in range(15):
        for optimizer, closure in zip(optimizers, closures):
            optimizer.step(closure)
            closure.advance()
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    for key, value in optimizers[0].last_stats.items():
        assert value == pytest.approx(optimizers[1].last_stats[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_reload_mid_run_continues_identically(name: str) -> None:
    """timm's check: reload the optimizer mid-run into a fresh copy; both copies stay bit-identical
    for 20 more steps."""
    model = small_mlp(dtype=torch.float32)
    optimizer = FACTORIES[name](two_groups(model), None)
    closure = mlp_closure(model)
    train(model, optimizer, closure, 7)
    saved = copy.deepcopy(optimizer.state_dict())
    clone = copy.deepcopy(model)
    clone_optimizer = FACTORIES[name](two_groups(clone), None)
    clone_optimizer.load_state_dict(saved)
    clone_closure = mlp_closure(clone)
    for _ in range(7):
        clone_closure.advance()
    for _ in range(20):
        optimizer.step(closure)
        clone_optimizer.step(clone_closure)
        closure.advance()
        clone_closure.advance()
        for a, b in zip(model.parameters(), clone.parameters()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_last_stats_are_lazy_finite_numbers(name: str) -> None:
    model = small_mlp()
    optimizer = FACTORIES[name](two_groups(model), None)
    assert optimizer.last_stats == {}
    closure = mlp_closure(model)
    train(model, optimizer, closure, 3)
    assert optimizer._stats is not None and optimizer._stats._values is None  # nothing computed yet
    stats = optimizer.last_stats
    assert stats and all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert optimizer.last_stats is stats  # cached: a second read costs nothing


def test_memoryless_stats_describe_the_correction() -> None:
    model = small_mlp()
    optimizer = MemorylessSGD(model.parameters(), lr=0.05, momentum=0.9, hvp="double_backward")
    closure = mlp_closure(model)
    train(model, optimizer, closure, 3)
    stats = optimizer.last_stats
    assert stats["correction_ratio"] == pytest.approx(stats["correction_norm"] / stats["plain_step_norm"], rel=1e-12)
    assert -1.0 <= stats["correction_cosine"] <= 1.0
    assert stats["implicit_penalty"] > 0


CONFIG_NAMES = [
    "lion",
    "lion_k",
    "sgd_memoryless",
    "adamw_memoryless",
    "lion_memoryless",
    "am_sgd",
    "am_adamw",
    "projected_adam",
]
CLASSES = [Lion, LionK, MemorylessSGD, MemorylessAdamW, MemorylessLion, AdaptiveMemorySGD, AdaptiveMemoryAdamW]
CLASSES += [ProjectedAdam]


@pytest.mark.parametrize(("name", "cls"), list(zip(CONFIG_NAMES, CLASSES)))
def test_registry_builds_each_optimizer_from_its_config(name: str, cls: type) -> None:
    entry = OPTIMIZERS.get(name)
    cfg = entry.config()
    cfg.check()
    optimizer = OPTIMIZERS.build(name, two_groups(small_mlp()), cfg)
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["lr"] == cfg.lr


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer=lion_k", "optimizer.delta"),
        ("optimizer=sgd_memoryless", "optimizer.hvp"),
        ("optimizer=am_adamw", "optimizer.offset"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(compose, override: str, key: str) -> None:
    from memexp.errors import ConfigValueError
    from memexp.train import check_config

    bad = {"optimizer.delta": "0", "optimizer.hvp": "backward", "optimizer.offset": "carried"}[key]
    with pytest.raises(ConfigValueError, match=key.replace(".", r"\.")):
        check_config(compose([override, f"{key}={bad}"]))


@pytest.mark.parametrize(
    "name", [*CONFIG_NAMES, "sgd_memoryless optimizer.hvp=double_backward", "lion_k optimizer.kernel=linf"]
)
def test_memexp_train_runs_each_optimizer(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memexp import cli

    name, *extra = name.split()
    run_dir = tmp_path / name
    monkeypatch.setenv("WANDB_MODE", "disabled")
    code = cli.main(
        [
            "train",
            f"optimizer={name}",
            "model=mlp",
            "trainer=quick",
            "trainer.max_steps=5",
            "trainer.eval_every=0",
            "trainer.progress=off",
            "logger=none",
            f"hydra.run.dir={run_dir}",
            *extra,
        ]
    )
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 5


def test_every_optimizer_describes_itself() -> None:
    """The registry's descriptions, including torch's own classes, and the attribute the builder sets."""
    from memexp.optim import describe, twin_for
    from memexp.optim.memory import MemoryFamily

    expected = {
        "sgd": (torch.optim.SGD, MemoryFamily.heavy_ball, False),
        "adamw": (torch.optim.AdamW, MemoryFamily.adam, True),
        "lion": (Lion, MemoryFamily.lion, True),
        "lion_k": (LionK, MemoryFamily.lion, True),
        "sgd_memoryless": (MemorylessSGD, MemoryFamily.heavy_ball, False),
        "adamw_memoryless": (MemorylessAdamW, MemoryFamily.adam, True),
        "lion_memoryless": (MemorylessLion, MemoryFamily.lion, True),
        "am_sgd": (AdaptiveMemorySGD, MemoryFamily.adaptive_memory, False),
        "am_adamw": (AdaptiveMemoryAdamW, MemoryFamily.adaptive_memory, True),
        "projected_adam": (ProjectedAdam, MemoryFamily.adam, False),
    }
    assert sorted(expected) == OPTIMIZERS.names()
    for name, (cls, family, decoupled) in expected.items():
        info = OPTIMIZERS.get(name).info
        assert (info.optimizer_class, info.memory, info.decoupled_decay) == (cls, family, decoupled), name
        built = OPTIMIZERS.build(name, two_groups(small_mlp()), info.config())
        assert built.optimizer_info is info and describe(built) is info
        by_hand = cls(small_mlp().parameters())  # no attribute: found by its exact class
        assert describe(by_hand) is info
        assert info.needs_hvp == (info.twin_of is not None)
    assert {name: twin_for(name).name for name in ("sgd", "adamw", "lion")} == {
        "sgd": "sgd_memoryless",
        "adamw": "adamw_memoryless",
        "lion": "lion_memoryless",
    }
    assert twin_for("am_sgd") is None


@pytest.mark.parametrize(
    ("name", "override", "key"),
    [
        ("lion", {"beta1": 1.0}, "optimizer.beta1"),
        ("am_adamw", {"beta_max": -0.1}, "optimizer.beta_max"),
        ("adamw_memoryless", {"beta2": 1.0}, "optimizer.beta2"),
        ("sgd", {"dampening": 2.0}, "optimizer.dampening"),
        ("adamw", {"fused": True, "foreach": True}, "optimizer.fused"),
        ("sgd_memoryless", {"correction_scale": float("inf")}, "optimizer.correction_scale"),
    ],
)
def test_constructor_ranges_become_config_errors_naming_the_config_key(name: str, override: dict, key: str) -> None:
    """One range check (the constructor's); the config names the config field, betas[0] -> beta1."""
    from memexp.errors import ConfigValueError

    cfg = OPTIMIZERS.get(name).config(**override)
    with pytest.raises(ConfigValueError) as raised:
        try:
            cfg.check()
        except ConfigValueError as error:
            raise error.with_prefix("optimizer") from None
    assert raised.value.key == key and "\n" not in str(raised.value)
