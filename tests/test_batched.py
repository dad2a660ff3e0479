"""hydra/launcher=batched: members follow their single runs, the launcher behaves like Hydra's
basic one (run dirs, job keys, reuse), refusals are one line, a killed population resumes exactly."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from memexp import rundir
from memexp.batched.optim import BatchedOptimizer
from memexp.batched.population import Member, Population, member_eval_batch, pass_width, refusal
from memexp.config import Progress
from memexp.logging import LocalLogger, read_metrics
from memexp.logging.progress import ProgressReporter
from memexp.models.population import linear_chain_gradients
from memexp.optim.base import training_closure
from memexp.train import build_run, check_config, train
from tests.conftest import memexp_env, run_memexp

Compose = Callable[[list[str]], DictConfig]
TRAINER = ["trainer.max_steps=100", "trainer.log_every=1", "trainer.eval_every=0", "logger=none", "metrics=none"]
# Three members per optimizer: different seeds and different per-member hyperparameters.
MEMBERS = {
    "sgd": [
        ["seed=0", "optimizer.lr=0.05"],
        ["seed=1", "optimizer.lr=0.1", "optimizer.momentum=0.5", "optimizer.weight_decay=1e-3"],
        ["seed=2", "optimizer.lr=0.02", "optimizer.momentum=0.0"],
    ],
    # AdamW at lr 3e-3 on the CNN amplifies rounding within 50 steps: the basic launcher's own run
    # differs from itself by 1.4e-4 between 1 and 2 threads (seed 9), and so does any other order of
    # the same sums. Trajectories are compared where rounding stays rounding (lr <= 1e-3);
    # test_member_gradients_equal_single_run_gradients holds each step's arithmetic to 1e-5.
    "adamw": [
        ["seed=0", "optimizer.lr=1e-3"],
        ["seed=1", "optimizer.lr=1e-3", "optimizer.weight_decay=0.1", "optimizer.beta2=0.99"],
        ["seed=2", "optimizer.lr=5e-4", "optimizer.weight_decay=0.0", "optimizer.beta1=0.8"],
    ],
    "lion": [
        ["seed=0", "optimizer.lr=1e-4"],
        ["seed=1", "optimizer.lr=3e-4", "optimizer.weight_decay=0.1", "optimizer.beta1=0.95"],
        ["seed=2", "optimizer.lr=2e-4", "optimizer.beta2=0.98"],
    ],
    # Lion-K's elementwise kernels, with a per-member softsign temperature.
    "lion_k": [
        ["seed=0", "optimizer.kernel=softsign", "optimizer.lr=1e-4", "optimizer.delta=1e-3"],
        ["seed=1", "optimizer.kernel=softsign", "optimizer.lr=3e-4", "optimizer.delta=0.01", "optimizer.beta1=0.8"],
        ["seed=2", "optimizer.kernel=softsign", "optimizer.delta=3e-4", "optimizer.weight_decay=0.1"],
    ],
    # Adam projected onto Lion's box |x| ≤ 1/λ (weight_decay is λ): boxes of 0.1 and 0.05 bind on the
    # MLP's first layer from initialization (|x| ≤ 1/8 there).
    "projected_adam": [
        ["seed=0", "optimizer.lr=1e-3"],
        ["seed=1", "optimizer.lr=1e-3", "optimizer.weight_decay=10"],
        ["seed=2", "optimizer.lr=5e-4", "optimizer.weight_decay=20", "optimizer.beta2=0.99"],
    ],
    # Adaptive memory momentum: each member's β_t from its own sums, over the whole model (global
    # scope) or per tensor.
    # am_adamw scopes per tensor by default (am_sgd globally); both scopes are in
    # test_adaptive_memory_members_log_their_single_runs_betas.
    "am_sgd": [
        ["seed=0", "optimizer.lr=0.1"],
        ["seed=1", "optimizer.lr=0.05", "optimizer.rho=0.0", "optimizer.weight_decay=1e-3"],
        ["seed=2", "optimizer.lr=0.1", "optimizer.beta_max=0.8", "optimizer.rho=0.3"],
    ],
    "am_adamw": [
        ["seed=0", "optimizer.lr=1e-3"],
        ["seed=1", "optimizer.lr=2e-3", "optimizer.rho=0.0", "optimizer.weight_decay=0.1", "optimizer.beta2=0.99"],
        ["seed=2", "optimizer.lr=1e-3", "optimizer.beta_max=0.8", "optimizer.rho=0.3", "optimizer.eps=1e-6"],
    ],
    # The memoryless twins: one H·v per member by finite differences; a member without momentum (SGD)
    # or with correction_scale 0 does not correct, as its single run does not. The finite difference
    # divides rounding by its radius (~3e-4·‖θ‖), and the exact twins sit near their stability limit
    # (heavy ball at lr 0.01: h·c_n → 9; AdamW's 1/(|g| + ε) at ε = 1e-8), where a single run differs
    # from itself by 1% between 1 and 2 threads (sgd_memoryless on the CNN). Trajectories are compared
    # where rounding stays rounding; test_a_twin_members_step_is_its_single_runs holds one step of
    # each default twin to its single run's.
    "sgd_memoryless": [
        ["seed=0", "optimizer.lr=0.01", "optimizer.correction_scale=0.1", "optimizer.hvp_radius=0.01"],
        [
            "seed=1",
            "optimizer.lr=0.02",
            "optimizer.momentum=0.5",
            "optimizer.weight_decay=1e-3",
            "optimizer.hvp_radius=0.01",
        ],
        ["seed=2", "optimizer.lr=0.01", "optimizer.momentum=0.0", "optimizer.hvp_radius=0.01"],
    ],
    "adamw_memoryless": [
        ["seed=0", "optimizer.lr=1e-3", "optimizer.eps=1e-3"],
        ["seed=1", "optimizer.eps=0.01", "optimizer.weight_decay=0.1", "optimizer.beta2=0.99"],
        ["seed=2", "optimizer.lr=5e-4", "optimizer.eps=1e-4", "optimizer.correction_scale=0"],
    ],
    "lion_memoryless": [
        ["seed=0", "optimizer.lr=1e-4", "optimizer.hvp=central"],
        ["seed=1", "optimizer.lr=3e-4", "optimizer.weight_decay=0.1", "optimizer.beta1=0.95", "optimizer.hvp=central"],
        [
            "seed=2",
            "optimizer.lr=2e-4",
            "optimizer.beta2=0.98",
            "optimizer.correction_scale=0.5",
            "optimizer.hvp=central",
        ],
    ],
}
# The CNN runs a cosine schedule with warmup and gradient clipping (per member) on top.
MODELS = {
    "mlp": ["model=mlp"],
    "cnn": ["model=cnn", "trainer.lr_schedule=cosine", "trainer.warmup_steps=10", "trainer.grad_clip=1.0"],
    # A narrow ViT (its own population forward: batched attention, patch embedding as a product).
    "vit": ["model=vit", "model.embed_dim=24", "model.depth=2", "model.num_heads=2"],
    # experiment=rmed_deep_linear's model and data: a regression task (MSE, no accuracy).
    "deep_linear": ["model=deep_linear", "data=synthetic_regression"],
    # A language model with tied weights: the offline text in 32-token blocks.
    "gpt": ["model=gpt_nano", "model.n_layer=2", "data=stdlib_text", "data.block_size=32", "data.eval_blocks=16"],
}


def make_member(cfg: DictConfig, run_dir: Path) -> Member:
    run_dir.mkdir(parents=True)
    return Member(run_cfg=check_config(cfg), run_dir=run_dir, key=rundir.job_key(cfg), cfg=cfg)


def trained_runs_and_their_population(configs: list[DictConfig], tmp_path: Path) -> tuple[list, Population]:
    """Each config trained as a single run (its whole trainer.max_steps), and a population of the same
    configs whose members hold those runs' trained weights: one step's arithmetic is then compared
    at realistic weights, free of trajectory chaos."""
    runs = []
    for index, cfg in enumerate(configs):
        run, run_dir = build_run(check_config(cfg)), tmp_path / f"single{index}"
        run_dir.mkdir()
        train(run, run_dir, [LocalLogger(run_dir)], ProgressReporter(run.max_steps, Progress.off))
        runs.append(run)
    population = Population([make_member(cfg, tmp_path / f"member{i}") for i, cfg in enumerate(configs)])
    with torch.no_grad():
        for index, run in enumerate(runs):
            for name, param in run.model.named_parameters():
                population.member_params(index)[name].copy_(param)
    return runs, population


def single_run(cfg: DictConfig, run_dir: Path) -> tuple[list[float], dict]:
    run_dir.mkdir(parents=True)
    run = build_run(check_config(cfg))
    summary = train(run, run_dir, [LocalLogger(run_dir)], ProgressReporter(run.max_steps, Progress.off))
    return batch_losses(run_dir), summary


def batch_losses(run_dir: Path) -> list[float]:
    return [e["train/batch_loss"] for e in read_metrics(run_dir / "metrics.jsonl") if "train/batch_loss" in e]


def relative_error(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def held_out_losses(summary: dict) -> dict[str, float]:
    """The final loss of every evaluation split but the training subset (and the gap)."""
    return {k: v for k, v in summary.items() if k.endswith("/loss") and k.split("/")[0] not in ("train", "gap")}


# Settings the members of a population share (config keys that are not batched), each with its members:
# Nesterov momentum, AMSGrad, lion_k's per-tensor norm kernels (∇K(c) = c/‖c‖ per tensor, or the sign
# on each tensor's argmax: steps of norm lr per tensor, hence the larger lrs).
SHARED = {
    "sgd+nesterov": ("sgd", ["optimizer.nesterov=true"], MEMBERS["sgd"][:2]),
    "adamw+amsgrad": ("adamw", ["optimizer.amsgrad=true"], MEMBERS["adamw"]),
    "lion_k+l2": (
        "lion_k",
        ["optimizer.kernel=l2"],
        [["seed=0", "optimizer.lr=0.02"], ["seed=1", "optimizer.lr=0.05", "optimizer.weight_decay=0.1"]],
    ),
    "lion_k+linf": (
        "lion_k",
        ["optimizer.kernel=linf"],
        [["seed=0", "optimizer.lr=0.05"], ["seed=1", "optimizer.lr=0.1", "optimizer.beta1=0.8"]],
    ),
}
# Every optimizer on every model but the GPT, whose cases take 15-40 s each: what it adds is the model
# (tied weights stacked once, its weight-decay groups, the language-model task), which adamw covers
# (decoupled decay on its groups), am_adamw (per-tensor sums over segments with a tied tensor) and
# lion_memoryless (the twins' perturbed pass through the tied weights); the other optimizers'
# arithmetic on the [M, N] blocks does not depend on the model and is covered by the other four.
GPT_OPTIMIZERS = ("adamw", "am_adamw", "lion_memoryless")
CASES = [(o, m) for o in MEMBERS for m in MODELS if m != "gpt" or o in GPT_OPTIMIZERS]
CASES += [(case, model) for case in SHARED for model in ("mlp", "cnn")]


@pytest.mark.parametrize(("optimizer", "model"), CASES)
def test_each_member_follows_its_single_run(
    optimizer: str, model: str, compose: Compose, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)
    name, shared, members = SHARED.get(optimizer, (optimizer, [], MEMBERS.get(optimizer, [])))
    configs = [compose([f"optimizer={name}", *shared, *MODELS[model], *TRAINER, *m]) for m in members]
    population = Population([make_member(cfg, tmp_path / f"member{i}") for i, cfg in enumerate(configs)])
    # Initial weights: exactly what memexp.train.build_run gives each seed.
    for index, cfg in enumerate(configs):
        for name, param in build_run(check_config(cfg)).model.named_parameters():
            assert torch.equal(population.member_params(index)[name], param), (index, name)
    summaries = population.train()
    worst_loss, worst_final = 0.0, 0.0
    for index, cfg in enumerate(configs):
        expected_losses, expected = single_run(cfg, tmp_path / f"single{index}")
        losses = batch_losses(tmp_path / f"member{index}")
        assert len(losses) == len(expected_losses) == 100
        worst_loss = max(worst_loss, *(relative_error(a, b) for a, b in zip(losses[:50], expected_losses[:50])))
        assert summaries[index]["status"] == expected["status"] == "finished"
        assert summaries[index]["step"] == expected["step"] == 100
        assert summaries[index]["lr"] == pytest.approx(expected["lr"], rel=1e-12, abs=1e-15)
        final = held_out_losses(expected)
        assert final and held_out_losses(summaries[index]).keys() == final.keys()
        worst_final = max(worst_final, *(relative_error(summaries[index][k], v) for k, v in final.items()))
    with capsys.disabled():
        print(f"\n{optimizer}/{model}: first 50 losses max rel err {worst_loss:.2e}, final held-out {worst_final:.2e}")
    assert worst_loss <= 1e-4
    assert worst_final <= 1e-3


def geometry_rows(run_dir: Path) -> dict[int, dict[str, float]]:
    """The geom/* values logged at each step."""
    rows: dict[int, dict[str, float]] = {}
    for entry in read_metrics(run_dir / "metrics.jsonl"):
        values = {k: v for k, v in entry.items() if k.startswith("geom/")}
        if values:
            rows.setdefault(entry["step"], {}).update(values)
    return rows


@pytest.mark.parametrize("optimizer", list(MEMBERS))
def test_each_member_logs_its_single_runs_economy_metrics(optimizer: str, compose: Compose, tmp_path: Path) -> None:
    """metrics=default (the economy tier) batches: every member logs the geom/* values its single run
    logs, at the same steps (weight decay, momentum and betas differ across the members)."""
    torch.set_num_threads(1)
    trainer = ["trainer.max_steps=30", "trainer.log_every=10", "trainer.eval_every=10", "logger=none"]
    trainer += ["metrics=default", "trainer.lr_schedule=cosine"]  # the correction term scales with the scheduled lr
    configs = [compose([f"optimizer={optimizer}", "model=mlp", *trainer, *m]) for m in MEMBERS[optimizer]]
    population = Population([make_member(cfg, tmp_path / f"member{i}") for i, cfg in enumerate(configs)])
    summaries = population.train()
    compared, worst = 0, 0.0
    for index, cfg in enumerate(configs):
        _, expected = single_run(cfg, tmp_path / f"single{index}")
        want, got = geometry_rows(tmp_path / f"single{index}"), geometry_rows(tmp_path / f"member{index}")
        assert sorted(got) == sorted(want) == [10, 20, 30]
        for step, values in want.items():
            assert got[step].keys() == values.keys(), step
            for key, value in values.items():
                assert got[step][key] == pytest.approx(value, rel=1e-3, abs=1e-6), (index, step, key)
                worst = max(worst, relative_error(got[step][key], value) if abs(value) > 1e-6 else 0.0)
                compared += 1
        assert {k for k in summaries[index] if k.startswith("geom/")} == {k for k in expected if k.startswith("geom/")}
        assert summaries[index]["metrics_time_s"] > 0
    assert compared >= 3 * 3 * 8  # members x steps x (grad norms, correction, weight and update norms, ...)
    print(f"{optimizer}: {compared} geom/* values, worst relative error {worst:.1e}")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "projected_adam"])
def test_each_member_logs_its_single_runs_hessian_metrics(optimizer: str, compose: Compose, tmp_path: Path) -> None:
    """metrics=full (sharpness, Adam-preconditioned sharpness, Hessian trace, the correction ratio,
    R_med from exact Hessian diagonals) runs member by member on the single run's code, the member's
    optimizer state loaded as its single run holds it: every member logs its single run's values."""
    torch.set_num_threads(1)
    trainer = ["trainer.max_steps=20", "trainer.log_every=10", "trainer.eval_every=10", "logger=none"]
    metrics = ["metrics=full", "metrics.probe_size=64", "metrics.hutchinson_probes=8", "metrics.sharpness_iters=8"]
    metrics += ["metrics.r_med_at_steps=[20]", "metrics.r_med_tensors=[net.3.*]"]
    overrides = [f"optimizer={optimizer}", "model=mlp", "model.hidden_sizes=[16]", *trainer, *metrics]
    configs = [compose([*overrides, *m]) for m in MEMBERS[optimizer]]
    Population([make_member(cfg, tmp_path / f"member{i}") for i, cfg in enumerate(configs)]).train()
    compared, worst, count = set(), 0.0, 0
    for index, cfg in enumerate(configs):
        single_run(cfg, tmp_path / f"single{index}")
        want, got = geometry_rows(tmp_path / f"single{index}"), geometry_rows(tmp_path / f"member{index}")
        assert sorted(got) == sorted(want) == [10, 20]
        for step, values in want.items():
            assert got[step].keys() == values.keys(), step
            for key, value in values.items():
                assert got[step][key] == pytest.approx(value, rel=1e-3, abs=1e-6), (index, step, key)
                compared.add(key.split("/")[1])
                worst = max(worst, relative_error(got[step][key], value) if abs(value) > 1e-6 else 0.0)
                count += 1
    print(f"{optimizer}: {count} geom/* values, worst relative error {worst:.1e}")
    expected = {"sharpness", "hessian_trace", "r_med", "correction_ratio"}
    assert expected | ({"sharpness_precond"} if optimizer == "adamw" else set()) <= compared


def test_a_members_checkpoint_of_a_tied_gpt_is_its_single_runs_state_dict(compose: Compose, tmp_path: Path) -> None:
    """Tied weights are stacked once, but a member's checkpoint lists every name (strict
    load_state_dict into the single run's model), and a population restores from it."""
    overrides = ["optimizer=adamw", *MODELS["gpt"], *TRAINER[1:], "trainer.max_steps=3"]
    configs = [compose([*overrides, f"seed={seed}"]) for seed in range(2)]
    population = Population([make_member(cfg, tmp_path / f"member{i}") for i, cfg in enumerate(configs)])
    assert population.tied == {"lm_head.weight": "wte.weight"}
    population.train()
    states = population.latest_common_checkpoint()
    assert states is not None and states[0]["step"] == 3
    for index, (cfg, state) in enumerate(zip(configs, states)):
        model = build_run(check_config(cfg)).model
        model.load_state_dict(state["model"])  # strict: every name of the single run's state_dict
        assert model.lm_head.weight is model.wte.weight
        torch.testing.assert_close(model.wte.weight, population.member_params(index)["wte.weight"], rtol=0, atol=0)
    fresh = Population([make_member(cfg, tmp_path / f"fresh{i}") for i, cfg in enumerate(configs)])
    assert fresh.restore(states) == 3
    torch.testing.assert_close(fresh.flat, population.flat, rtol=0, atol=0)


def test_a_diverging_member_stops_and_the_others_go_on(compose: Compose, tmp_path: Path) -> None:
    common = ["optimizer=sgd", "trainer=quick", "trainer.log_every=1", "logger=none", "metrics=none"]
    configs = [compose([*common, "optimizer.lr=0.05"]), compose([*common, "optimizer.lr=1e12"])]
    population = Population([make_member(cfg, tmp_path / f"member{i}") for i, cfg in enumerate(configs)])
    sane, diverged = population.train()
    assert diverged["status"] == "diverged" and diverged["step"] < 20
    assert sane["status"] == "finished" and sane["step"] == 20
    # Frozen from its divergence on: nothing logged after it, its parameters untouched since.
    assert read_metrics(tmp_path / "member1" / "metrics.jsonl")[-1]["step"] == diverged["step"]
    expected_losses, expected = single_run(configs[0], tmp_path / "single")
    assert batch_losses(tmp_path / "member0") == pytest.approx(expected_losses, rel=1e-4)


@pytest.mark.parametrize("model", list(MODELS))
def test_member_gradients_equal_single_run_gradients(model: str, compose: Compose, tmp_path: Path) -> None:
    """One step's arithmetic, free of trajectory chaos: after 100 steps of a single run (weights with
    dead units and near-zero gradients), every member given those weights and a batch gets the
    single run's loss and gradient on it to float rounding."""
    torch.set_num_threads(1)
    configs = [compose(["optimizer=adamw", *MODELS[model], *TRAINER, f"seed={seed}"]) for seed in range(3)]
    trained, population = trained_runs_and_their_population(configs, tmp_path)
    batches = [next(run.batches) for run in trained]
    x, y = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
    flat = population.flat.clone().requires_grad_(True)
    losses = population.task.member_loss(population.forward(population.stacked_params(flat), x), y)
    (gradient,) = torch.autograd.grad(losses.sum(), flat)
    paths = {"autograd": (losses, gradient)}
    # The MLP and the deep linear network train with their backward written out (no autograd).
    assert (population.linear_chain is not None) == (model in ("mlp", "deep_linear"))
    if population.linear_chain is not None:
        written = torch.zeros_like(population.flat)
        loss_and_gradient = population.task.member_loss_and_gradient
        chain_losses = linear_chain_gradients(
            population.stacked_params(population.flat),
            population.linear_chain,
            x,
            y,
            loss_and_gradient,
            population.stacked_params(written),
        )
        paths["written out"] = (chain_losses, written)
    for index, run in enumerate(trained):
        run.model.zero_grad()
        loss = run.task.loss(run.model(x[index]), y[index])
        loss.backward()
        params = dict(run.model.named_parameters())
        expected = torch.cat([params[name].grad.flatten() for name in population.names])
        for path, (path_losses, path_gradient) in paths.items():
            assert path_losses[index].item() == pytest.approx(loss.item(), rel=1e-6), path
            error = (path_gradient[index] - expected).norm() / expected.norm()
            assert error < 1e-5, (model, path, index, error.item())


TWIN_MEMBERS = {
    # The defaults (conf/optimizer/<twin>.yaml) and a member with other hyperparameters each.
    "sgd_memoryless": [[], ["optimizer.lr=0.05", "optimizer.momentum=0.5", "optimizer.weight_decay=1e-3"]],
    "adamw_memoryless": [[], ["optimizer.correction_scale=3e-3", "optimizer.beta2=0.99", "optimizer.weight_decay=0.1"]],
    "lion_memoryless": [[], ["optimizer.lr=3e-4", "optimizer.weight_decay=0.1", "optimizer.beta1=0.95"]],
}


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("twin", list(TWIN_MEMBERS))
def test_a_twin_members_step_is_its_single_runs(twin: str, model: str, compose: Compose, tmp_path: Path) -> None:
    """One twin step at trained weights (step count n = 30, so every finite-n coefficient is on), free
    of trajectory chaos: each member's update, the finite-difference H·v of its own block included,
    is its single run's on the same batch, the exact twins near their stability limit included. The
    MLP takes its gradients written out, the CNN through autograd (with gradient clipping)."""
    torch.set_num_threads(1)
    trainer = [
        *TRAINER,
        "trainer.max_steps=30",
        "trainer.lr_schedule=constant",
        "trainer.warmup_steps=0",
        "trainer.grad_clip=1.0",
    ]
    configs = [
        compose([f"optimizer={twin}", *MODELS[model], *trainer, f"seed={seed}", *overrides])
        for seed, overrides in enumerate(TWIN_MEMBERS[twin])
    ]
    runs, population = trained_runs_and_their_population(configs, tmp_path)
    population.optimizer.steps = 30  # as if it had trained: n = 30 in the step below
    batches = [next(run.batches) for run in runs]
    x, y = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
    before = population.flat.clone()
    population.step_on(x, y)
    updates = population.flat - before
    for index, (run, (xb, yb)) in enumerate(zip(runs, batches)):
        params = [p for p in run.model.parameters() if p.requires_grad]
        closure = training_closure(
            run.optimizer, run.forward, run.task.loss, lambda batch=(xb, yb): batch, params, 1.0, run.autocast
        )
        weights = {name: p.detach().clone() for name, p in run.model.named_parameters()}
        run.optimizer.step(closure)
        after = dict(run.model.named_parameters())
        expected = torch.cat([(after[name].detach() - weights[name]).flatten() for name in population.names])
        got = updates[index]
        if twin == "lion_memoryless":
            # ±h per coordinate (and the decay): a coordinate where g + c·H·v is ~0 may take the other
            # sign under other rounding; all but a few must agree exactly.
            differ = ((got - expected).abs() > 1e-3 * expected.abs().max()).float().mean().item()
            assert differ < 1e-3, (model, index, differ)
        else:
            # AdamW's twin divides by |g| + ε twice (ε = 1e-8): the rounding of a gradient coordinate
            # near 0 moves its update (3.3e-4 measured on the CNN's default member, ≤ 1.2e-5 elsewhere).
            error = ((got - expected).norm() / expected.norm()).item()
            assert error < (1e-3 if twin == "adamw_memoryless" else 1e-4), (model, index, error)


@pytest.mark.parametrize("scope", ["global", "per_tensor", "constant"])
@pytest.mark.parametrize("optimizer", ["am_sgd", "am_adamw"])
def test_adaptive_memory_members_log_their_single_runs_betas(
    optimizer: str, scope: str, compose: Compose, tmp_path: Path
) -> None:
    """Adaptive memory's β_t per member, over its whole model or per tensor (or fixed at β_max): each
    member's optim/beta_mean, _min, _max at every log step are its single run's, its losses too."""
    torch.set_num_threads(1)
    settings = ["optimizer.adaptive=false"] if scope == "constant" else [f"optimizer.scope={scope}"]
    trainer = [*TRAINER, "trainer.max_steps=40", "trainer.grad_clip=1.0"]
    configs = [compose([f"optimizer={optimizer}", "model=cnn", *settings, *trainer, *m]) for m in MEMBERS[optimizer]]
    Population([make_member(cfg, tmp_path / f"member{i}") for i, cfg in enumerate(configs)]).train()
    keys = ("optim/beta_mean", "optim/beta_min", "optim/beta_max")
    adapts = []
    for index, cfg in enumerate(configs):
        single_run(cfg, tmp_path / f"single{index}")
        got, want = (
            [
                [row[k] for k in keys]
                for row in read_metrics(tmp_path / f"{kind}{index}" / "metrics.jsonl")
                if keys[0] in row
            ]
            for kind in ("member", "single")
        )
        assert len(got) == len(want) == 40
        # β_t is a ratio of sums whose numerator cancels: per tensor (a 10-entry bias) rounding reaches
        # 3e-4 of it (am_adamw, 1 value in 120), while the losses agree to 2e-7.
        assert sum(got, []) == pytest.approx(sum(want, []), rel=1e-3, abs=1e-6), index
        spread = {round(hi - lo, 6) for _, lo, hi in want}
        assert (spread != {0.0}) == (scope == "per_tensor")  # per tensor: several β_t a step
        if scope == "constant":
            assert [mean for mean, _, _ in want] == pytest.approx([cfg.optimizer.beta_max] * 40)
        else:
            adapts.append(len({round(mean, 4) for mean, _, _ in want}) > 1)
        assert batch_losses(tmp_path / f"member{index}") == pytest.approx(
            batch_losses(tmp_path / f"single{index}"), rel=1e-4
        )
    assert scope == "constant" or any(adapts)  # β_t moves (a member's may sit at its β_max throughout)


@pytest.mark.parametrize("optimizer", ["sgd", "am_sgd", "am_adamw", "sgd_memoryless", "sgd+twins"])
def test_a_population_resumed_from_its_checkpoints_ends_as_an_uninterrupted_one(
    optimizer: str, compose: Compose, tmp_path: Path
) -> None:
    """The state beyond the buffers (am_sgd's previous lr, a twin's step count n in its coefficients,
    the twins trained alongside) is each member's checkpoint: a population that resumes from step 20
    ends where one that ran through ends, bit for bit."""
    torch.set_num_threads(1)
    name, twins = optimizer.removesuffix("+twins"), optimizer.endswith("+twins")
    overrides = [f"optimizer={name}", "model=mlp", *TRAINER, "trainer.max_steps=40", "trainer.checkpoint_every=20"]
    if twins:
        overrides += ["trainer.twin=true", "trainer.twin_uncorrected=true", "trainer.log_every=5"]
    configs = [compose([*overrides, *m]) for m in MEMBERS[name][:2]]
    through = Population([make_member(cfg, tmp_path / "through" / str(i)) for i, cfg in enumerate(configs)])
    through.train()
    members = []
    for index, cfg in enumerate(configs):  # each run dir as it was when step 20's checkpoints were written
        run_dir = tmp_path / "resumed" / str(index)
        shutil.copytree(tmp_path / "through" / str(index), run_dir)
        (run_dir / "checkpoints" / "step_00000040.pt").unlink()
        members.append(Member(run_cfg=check_config(cfg), run_dir=run_dir, key=rundir.job_key(cfg), cfg=cfg))
    resumed = Population(members)
    resumed.train()
    assert torch.equal(resumed.flat, through.flat)
    assert resumed.optimizer.steps == through.optimizer.steps == 40
    for index in range(2):
        assert batch_losses(tmp_path / "resumed" / str(index)) == batch_losses(tmp_path / "through" / str(index))
    if twins:
        assert resumed.twins is not None and through.twins is not None
        for mine, theirs in zip(resumed.twins.copies, through.twins.copies):
            assert torch.equal(mine.flat, theirs.flat)
        for index in range(2):
            after = [row for row in twin_rows(tmp_path / "resumed" / str(index)) if row["step"] > 20]
            assert after == [row for row in twin_rows(tmp_path / "through" / str(index)) if row["step"] > 20]


def test_a_twins_perturbed_pass_replays_the_steps_dropout_masks(compose: Compose, tmp_path: Path) -> None:
    """With dropout, H·v by finite differences is O(1/r) wrong unless the perturbed pass draws the
    step's own masks. The forward and the central difference (one and two perturbed passes) then
    estimate the same H·v, to O(r); and the random stream after the step is as after one pass."""
    torch.set_num_threads(1)
    # tanh: a ReLU network's gradient jumps where a unit's sign flips, so its finite differences depend on
    # the radius (forward and central differ by 95% on this MLP with ReLU, dropout or not).
    overrides = [
        "optimizer=sgd_memoryless",
        "model=mlp",
        "model.dropout=0.3",
        "model.activation=tanh",
        *TRAINER,
        "trainer.lr_schedule=constant",
        "optimizer.lr=0.1",
    ]
    updates, streams = {}, {}
    for hvp in ("forward", "central", "no correction"):
        method = ["optimizer.correction=false"] if hvp == "no correction" else [f"optimizer.hvp={hvp}"]
        configs = [compose([*overrides, *method, f"seed={seed}"]) for seed in range(2)]
        population = Population([make_member(cfg, tmp_path / hvp / str(i)) for i, cfg in enumerate(configs)])
        population.optimizer.steps = 30  # n = 30: a heavy-ball correction h·c_n of about 5 times H·g
        x, y = next(population.batches)
        before = population.flat.clone()
        torch.manual_seed(0)
        population.step_on(x, y)
        updates[hvp], streams[hvp] = population.flat - before, torch.get_rng_state()
    correction = updates["forward"] - updates["no correction"]
    difference = (updates["forward"] - updates["central"]).norm(dim=1) / correction.norm(dim=1)
    assert (difference < 1e-2).all(), difference
    assert (correction.norm(dim=1) > 0.1 * updates["forward"].norm(dim=1)).all()  # the correction is no rounding
    assert torch.equal(streams["forward"], streams["no correction"])
    assert torch.equal(streams["central"], streams["no correction"])


# trainer.twin: each member's memoryless twins trained alongside. A smooth network (tanh), lrs and ε
# inside the twins' tracking regime, so their distances are the measurement, not amplified rounding.
TWIN_ALONGSIDE = [
    "model=mlp",
    "model.activation=tanh",
    "trainer.twin=true",
    "trainer.twin_uncorrected=true",
    "trainer.lr_schedule=cosine",
    "trainer.warmup_steps=5",
    "trainer.max_steps=40",
    "trainer.log_every=5",
    "trainer.eval_every=0",
    "logger=none",
    "metrics=none",
]
TWIN_ALONGSIDE_MEMBERS = {
    "sgd": [["seed=0", "optimizer.lr=0.01"], ["seed=1", "optimizer.lr=0.005", "optimizer.weight_decay=0.01"]],
    "adamw": [
        ["seed=0", "optimizer.lr=1e-3", "optimizer.eps=0.01"],
        ["seed=1", "optimizer.lr=5e-4", "optimizer.eps=0.1", "optimizer.beta2=0.99"],
    ],
    "lion": [["seed=0", "optimizer.lr=1e-4"], ["seed=1", "optimizer.lr=2e-4", "optimizer.weight_decay=0.1"]],
}
TWIN_KEYS = ["twin/distance", "twin/distance_uncorrected", "twin/rel_distance", "twin/loss", "twin/loss_uncorrected"]


def twin_rows(run_dir: Path) -> list[dict[str, float]]:
    return [row for row in read_metrics(run_dir / "metrics.jsonl") if "twin/distance" in row]


@pytest.mark.parametrize("optimizer", list(TWIN_ALONGSIDE_MEMBERS))
def test_each_members_twins_follow_their_single_runs_twins(optimizer: str, compose: Compose, tmp_path: Path) -> None:
    """Each member's twin/* (its corrected and uncorrected twin's distance to it, their losses) are its
    single run's; the twins leave the members' own training as it is without them."""
    torch.set_num_threads(1)
    configs = [compose([f"optimizer={optimizer}", *TWIN_ALONGSIDE, *m]) for m in TWIN_ALONGSIDE_MEMBERS[optimizer]]
    population = Population([make_member(cfg, tmp_path / f"member{i}") for i, cfg in enumerate(configs)])
    summaries = population.train()
    plain = [
        compose([f"optimizer={optimizer}", *TWIN_ALONGSIDE, *m, "trainer.twin=false", "trainer.twin_uncorrected=false"])
        for m in TWIN_ALONGSIDE_MEMBERS[optimizer]
    ]
    Population([make_member(cfg, tmp_path / f"plain{i}") for i, cfg in enumerate(plain)]).train()
    worst = 0.0
    for index, cfg in enumerate(configs):
        assert batch_losses(tmp_path / f"member{index}") == batch_losses(tmp_path / f"plain{index}")
        _, expected = single_run(cfg, tmp_path / f"single{index}")
        got, want = twin_rows(tmp_path / f"member{index}"), twin_rows(tmp_path / f"single{index}")
        assert [row["step"] for row in got] == [row["step"] for row in want] == list(range(5, 41, 5))
        for mine, theirs in zip(got, want):
            assert mine.keys() == theirs.keys()
            assert theirs["twin/distance"] > 1e-4 * theirs["twin/distance"] / theirs["twin/rel_distance"]  # no rounding
            worst = max(worst, *(relative_error(mine[k], theirs[k]) for k in TWIN_KEYS))
            # a difference of two losses near 2, each to ~1e-6 of itself (Lion: 1.2e-6 measured)
            assert mine["twin/loss_diff"] == pytest.approx(theirs["twin/loss_diff"], abs=1e-5)
        assert {k: v for k, v in summaries[index].items() if k.startswith("twin/")} == pytest.approx(
            {k: v for k, v in expected.items() if k.startswith("twin/")}, rel=1e-4, abs=1e-5
        )
    # Lion's sign flips where the interpolated momentum is near 0: 5.6e-5 measured, sgd and adamw ≤ 1.6e-6.
    assert worst <= 2e-4, worst


def test_a_members_twins_draw_its_steps_dropout_masks(compose: Compose, tmp_path: Path) -> None:
    """The twins replay the members' random numbers: on the first step (n = 0: no memory, no correction)
    a twin's update is its member's, which with dropout it is only under the member's own masks; and
    the members' stream is left as without twins."""
    torch.set_num_threads(1)
    overrides = ["optimizer=sgd", "model.dropout=0.3", *TWIN_ALONGSIDE, "trainer.max_steps=1", "trainer.log_every=1"]
    populations = {}
    for twins in (True, False):
        configs = [
            compose([*overrides, f"seed={seed}", f"trainer.twin={twins}", f"trainer.twin_uncorrected={twins}"])
            for seed in range(2)
        ]
        populations[twins] = Population(
            [make_member(cfg, tmp_path / str(twins) / str(i)) for i, cfg in enumerate(configs)]
        )
    for twins, population in populations.items():
        torch.manual_seed(0)
        start = population.flat.clone()
        population.step_on(*next(population.batches))
        assert not torch.equal(population.flat, start)
        for twin in population.twins.copies if twins else []:  # type: ignore[union-attr]
            assert torch.equal(twin.flat, population.flat), twin.suffix
        population.step_on(*next(population.batches))  # its masks: those it draws without twins
    assert torch.equal(populations[True].flat, populations[False].flat)


def test_a_members_diverged_twin_logs_nan_and_stops_while_the_others_go_on(compose: Compose, tmp_path: Path) -> None:
    """memexp.twin's rule per member: a twin whose distance or loss is not finite logs nan from then on and is
    no longer stepped; the member's other twin and the other members' twins go on."""
    torch.set_num_threads(1)
    configs = [compose(["optimizer=sgd", *TWIN_ALONGSIDE, *m]) for m in TWIN_ALONGSIDE_MEMBERS["sgd"]]
    population = Population([make_member(cfg, tmp_path / str(i)) for i, cfg in enumerate(configs)])
    assert population.twins is not None
    corrected, uncorrected = population.twins.copies
    for _ in range(3):
        population.step_on(*next(population.batches))
    corrected.loss_sum[0] = math.inf  # its loss over the window: not finite (its weights stay comparable)
    first = population.twins.metrics([2.0, 2.0])
    assert math.isnan(first[0]["twin/distance"]) and math.isnan(first[0]["twin/loss"])
    assert math.isfinite(first[0]["twin/distance_uncorrected"]) and math.isfinite(first[1]["twin/distance"])
    assert corrected.diverged == [True, False] and uncorrected.diverged == [False, False]
    kept, others = corrected.flat[0].clone(), corrected.flat[1].clone()
    population.step_on(*next(population.batches))
    assert torch.equal(corrected.flat[0], kept)  # no longer stepped
    assert not torch.equal(corrected.flat[1], others)
    second = population.twins.metrics([2.0, 2.0])
    assert math.isnan(second[0]["twin/distance"]) and math.isfinite(second[1]["twin/distance"])


def test_passes_of_a_few_members_train_as_one_pass_does(compose: Compose, tmp_path: Path) -> None:
    """members_per_pass splits the forward and backward, not the arithmetic: each member's losses and
    weights are those of the population trained in one pass."""
    torch.set_num_threads(1)
    overrides = ["optimizer=adamw", *MODELS["vit"], *TRAINER[1:], "trainer.max_steps=15"]
    configs = [
        compose([*overrides, f"seed={seed}", f"optimizer.lr={lr}"]) for seed, lr in enumerate((1e-3, 3e-3, 2e-3))
    ]
    runs = {}
    for width in (0, 2):
        members = [make_member(cfg, tmp_path / f"w{width}" / str(i)) for i, cfg in enumerate(configs)]
        population = Population(members, members_per_pass=width)
        assert [(rows.start, rows.stop) for rows in population.passes] == ([(0, 3)] if width == 0 else [(0, 2), (2, 3)])
        population.train()
        runs[width] = population
    for index in range(3):
        expected = batch_losses(tmp_path / "w0" / str(index))
        assert batch_losses(tmp_path / "w2" / str(index)) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(runs[2].flat, runs[0].flat, rtol=1e-5, atol=1e-6)
    for got, want in zip(runs[2].evaluate_all(), runs[0].evaluate_all()):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)  # eval batches of 1024//2 vs 1024//3


def test_pass_width_is_all_members_unless_their_parameters_outgrow_a_cpus_caches() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pass_width(0, 16, 26_122, cpu) == 16  # the digits MLP
    assert pass_width(0, 16, 5_362_762, cpu) == 4  # the tiny ViT: 85.8M parameters in 4 passes
    assert pass_width(0, 16, 5_362_762, cuda) == 16
    assert pass_width(0, 3, 20_000_000, cpu) == 1
    assert pass_width(5, 16, 26_122, cpu) == 5 and pass_width(32, 16, 26_122, cuda) == 16


def test_a_pass_evaluates_as_many_examples_as_one_runs_evaluation() -> None:
    # One pass of 16 members: 1/16 of the run's batch each (the memory of one run's evaluation).
    assert member_eval_batch(1024, 449, 16, passes=1) == 64
    # In passes (compute-bound): 1/width of the run's actual forward, the 449-example split.
    assert member_eval_batch(1024, 449, 4, passes=4) == 113
    assert member_eval_batch(1024, 5000, 4, passes=4) == 256
    assert member_eval_batch(8, 449, 16, passes=1) == 1


def test_optimizer_freezes_the_listed_members() -> None:
    decayed, not_decayed = torch.ones(3, 1), torch.ones(3, 1)
    hyper = {k: torch.full((3,), v, dtype=torch.float64) for k, v in (("lr", 0.5), ("beta1", 0.9), ("beta2", 0.99))}
    hyper["weight_decay"] = torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64)
    optimizer = BatchedOptimizer("lion", [decayed, not_decayed], 1, hyper)
    optimizer.step([torch.ones(3, 1), -torch.ones(3, 1)], hyper["lr"], frozen=torch.tensor([1]))
    # Lion's first step: c = (1 - β1)·g, x ← x·(1 − η·λ) − η·sign(c); only member 2 decays, and only
    # the decayed block; member 1 is frozen.
    assert decayed.flatten().tolist() == pytest.approx([0.5, 1.0, 0.9 - 0.5], rel=1e-7)
    assert not_decayed.flatten().tolist() == [1.5, 1.0, 1.5]


def test_jobs_share_a_population_when_only_batchable_keys_differ(compose: Compose) -> None:
    from memexp.batched.launcher import plan_populations

    overrides = [
        ["optimizer=adamw", "seed=0"],
        ["optimizer=adamw", "seed=1", "optimizer.lr=3e-3", "optimizer.beta2=0.99", "logger=none"],
        ["optimizer=adamw", "seed=2", "model.hidden_sizes=[64]"],  # other shapes
        ["optimizer=lion", "seed=0"],  # another optimizer
        ["optimizer=adamw", "seed=3", "trainer.max_steps=7"],  # another loop
        ["optimizer=adamw", "seed=4", "optimizer.weight_decay=0.5"],
    ]
    configs = [compose(o) for o in overrides]
    assert plan_populations(configs, 16) == [[0, 1, 5], [2], [3], [4]]
    assert plan_populations(configs, 2) == [[0, 1], [5], [2], [3], [4]]


# ----------------------------------------------------------------------------------------------
# The launcher, as users run it.

SWEEP = ["train", "-m", "hydra/launcher=batched", "trainer=quick", "logger=none", "metrics=none"]


def test_launcher_runs_populations_with_ordinary_run_dirs_and_reuses_finished_jobs(tmp_path: Path) -> None:
    args = [*SWEEP, "optimizer=sgd", "seed=0,1", "optimizer.lr=0.05,0.1", "model.hidden_sizes=[32],[16]"]
    first = run_memexp(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "8 jobs in 2 populations of up to 16" in first.stdout
    [sweep_dir] = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    for index, job in enumerate(rundir.compose_sweep(args[2:]).jobs):
        cfg = job.config
        job_dir = sweep_dir / str(index)
        summary = json.loads((job_dir / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["step"] == 20, index
        assert (job_dir / "job_key.txt").read_text().strip() == rundir.job_key(cfg)
        assert (job_dir / ".hydra" / "overrides.yaml").is_file() and (job_dir / "checkpoints").is_dir()
        assert [e["step"] for e in read_metrics(job_dir / "metrics.jsonl") if "train/batch_loss" in e] == [
            5,
            10,
            15,
            20,
        ]
    time.sleep(1.1)  # a new sweep dir (one-second resolution)
    second = run_memexp(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already finished") == 8
    second_dir = max((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    reused = json.loads((second_dir / "3" / "summary.json").read_text())
    assert reused["reused_from"] == str(sweep_dir / "3")


def test_launcher_refuses_what_it_cannot_batch_in_one_line(compose: Compose, tmp_path: Path) -> None:
    # As users meet it: a job's key and a launcher's setting, one line each, exit 2, nothing written.
    result = run_memexp(*SWEEP, "optimizer=am_sgd", "optimizer.offset=carried", "seed=0,1", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("memexp: error: optimizer.offset='carried' is not allowed: one of taylor under hydra")
    assert not (tmp_path / "outputs").exists()
    result = run_memexp(*SWEEP, "hydra.launcher.members_per_pass=-1", "seed=0,1", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("memexp: error: hydra.launcher.members_per_pass=-1 is not allowed: an integer >= 1, or 0")
    assert not (tmp_path / "outputs").exists()
    # The other refusals take the same path (memexp.batched.launcher.check_launch raises refusal's error).
    refused = {
        ("trainer.twin=true", "trainer.twin_hvp=double_backward"): (
            "trainer.twin_hvp='double_backward' is not allowed: one of forward, central under hydra"
        ),
        ("trainer.twin=true", "optimizer=am_sgd"): "trainer.twin=True is not allowed: true only with optimizer in",
        ("optimizer=sgd_memoryless", "optimizer.hvp=double_backward"): (
            "optimizer.hvp='double_backward' is not allowed: one of forward, central under hydra"
        ),
    }
    for overrides, message in refused.items():
        problem = refusal(check_config(compose(["trainer=quick", *overrides])))
        assert problem is not None and str(problem).startswith(message), (overrides, problem)
    assert refusal(check_config(compose(["trainer=quick", "trainer.twin=true"]))) is None


def test_the_sweeper_leaves_composing_the_batch_to_the_batched_launcher(tmp_path: Path) -> None:
    """memexp_basic (train -m's sweeper) composes a batch to check it only when the launcher does not
    do so itself before running any job; a bad override still stops the batched sweep before any
    job trains."""
    from types import SimpleNamespace

    from hydra_plugins.memexp_batched_launcher.batched_launcher import BatchedLauncher
    from hydra_plugins.memexp_sweeper import MemexpBasicSweeper

    composed: list[list[str]] = []
    loader = SimpleNamespace(load_sweep_config=lambda master_config, sweep_overrides: composed.append(sweep_overrides))
    batch = [["seed=0"], ["seed=1"]]
    for launcher, expected in ((SimpleNamespace(), batch), (BatchedLauncher.__new__(BatchedLauncher), [])):
        sweeper, composed[:] = MemexpBasicSweeper(), []
        sweeper.basic.launcher, sweeper.basic.config = launcher, OmegaConf.create({})
        sweeper.basic.hydra_context = SimpleNamespace(config_loader=loader)
        sweeper.leave_validation_to_the_launcher()
        sweeper.basic.validate_batch_is_legal(batch)
        assert composed == expected
    result = run_memexp(*SWEEP, "seed=0,1", "optimizer.lr=0.1,oops", cwd=tmp_path)
    assert result.returncode != 0
    assert "Value 'oops' of type 'str' could not be converted to Float" in result.stderr
    assert not list((tmp_path / "outputs").rglob("summary.json"))


KILL_SWEEP = [
    *SWEEP,
    "optimizer=adamw",
    "seed=0,1,2",
    "trainer.max_steps=1000",
    "trainer.log_every=10",
    "trainer.eval_every=500",
    "trainer.checkpoint_every=100",
    "trainer.progress=plain",
]
RESULT_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "step", "status")


def test_kill_9_then_resume_equals_an_uninterrupted_population(tmp_path: Path) -> None:
    env = memexp_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    killed.mkdir(), reference.mkdir()
    command = [str(Path(sys.executable).parent / "memexp"), *KILL_SWEEP, "hydra.sweep.dir=sweep"]
    process = subprocess.Popen(command, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = killed / "sweep" / "2" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while (not metrics.is_file() or len(metrics.read_text().splitlines()) < 30) and process.poll() is None:
        assert time.monotonic() < deadline, "the population never reached step 300"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the population ended before the kill"
    assert json.loads((killed / "sweep" / "0" / "summary.json").read_text())["status"] == "running"

    resumed = run_memexp(*KILL_SWEEP, "hydra.sweep.dir=sweep", cwd=killed, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint at step" in resumed.stdout
    uninterrupted = run_memexp(*KILL_SWEEP, "hydra.sweep.dir=sweep", cwd=reference, env=env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    for job in ("0", "1", "2"):
        after = json.loads((killed / "sweep" / job / "summary.json").read_text())
        expected = json.loads((reference / "sweep" / job / "summary.json").read_text())
        assert {k: after[k] for k in RESULT_KEYS} == {k: expected[k] for k in RESULT_KEYS}, job
        events, reference_events = (read_metrics(d / "sweep" / job / "metrics.jsonl") for d in (killed, reference))
        assert [e["step"] for e in events] == [e["step"] for e in reference_events]
        assert [e.get("train/batch_loss") for e in events] == [e.get("train/batch_loss") for e in reference_events]
        assert all(math.isfinite(e.get("train/batch_loss", 0.0)) for e in events)
