"""A population: N jobs of a sweep that differ only in batchable keys, trained together in one
process, vectorized over a leading member dimension.

Each member is built with the single run's seeding (memexp.train.build_run: ``seed_everything(seed)``
then the model), so its initial weights are the basic launcher's; it draws its own batches from its
own BatchIterator (seeded with its seed) and has its own hyperparameters. The members' parameters
are stacked (``stack_module_state``); one forward computes every member's loss (the model's
``population_forward``: memexp/models/population.py for chains of layers, the ViT's own), one
backward pass their gradients (the members are independent, so the gradient of the summed losses is
each member's own gradient; a model that is one linear chain, the MLP without dropout or the deep
linear network, has its backward written out and runs no autograd: ``linear_chain_gradients``), and
the batched optimizer (memexp/batched/optim.py) updates them. A
compute-bound model on a CPU runs in a few passes of members (``pass_width``). ``vmap`` of each
model's ``forward`` was the first general path: exact, but it moved the member dimension around every
operation and ran attention member by member; each batched model now lays out its own population
forward. Evaluation runs every member at once as well; logging,
summaries and checkpoints are per member, in each member's run dir, with the same keys and statuses
as memexp.train.train. ``trainer.twin``'s twins are populations of their own, stepped after the
members (memexp/batched/twin.py).

Checkpoints: each member writes its own ``checkpoints/step_*.pt`` in its run dir (its parameters as
an ordinary ``state_dict`` under ``model``, its optimizer buffers under ``population_optimizer``,
its data position, the process RNG). A population resumes from the newest step at which every
member has a readable checkpoint, else from step 0 (deterministic either way).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.func import stack_module_state

from memexp import checkpoint as ckpt
from memexp.batched.adaptive_memory import ADAPTIVE_MEMORY_HYPERPARAMETERS, BATCHED_OFFSETS, Segments
from memexp.batched.memoryless import FINITE_DIFFERENCES
from memexp.batched.optim import (
    ADAM_STEPS,
    HYPERPARAMETERS,
    BatchedOptimizer,
    OptimizerOptions,
    clip_grad_norms_,
    member_hyperparameters,
)
from memexp.batched.twin import PopulationTwins
from memexp.config import Precision, Resume
from memexp.data import DATASETS, BatchIterator
from memexp.data.base import MemberBatches
from memexp.errors import ConfigValueError
from memexp.logging import LocalLogger, MultiLogger
from memexp.logging.progress import ProgressReporter
from memexp.metrics import GeometryProbe
from memexp.models import MODELS
from memexp.models.population import ChainPopulationForward, linear_chain_gradients
from memexp.optim import OPTIMIZERS, param_groups_weight_decay
from memexp.optim.am_sgd import beta_stats
from memexp.optim.closure_hvp import RNGSnapshot
from memexp.schedules import build_scheduler
from memexp.signals import GracefulStop, Interrupted
from memexp.tasks import TASKS, evaluate_members
from memexp.train import RunConfig, gap_metrics, resolve_device
from memexp.twin import twin_config

OPTIMIZER_STATE_KEY = "population_optimizer"
# Models whose forward is a pure function of their parameters (no buffers updated in training).
BATCHED_MODELS = ("mlp", "cnn", "vit", "deep_linear", "gpt")
LAUNCHER = "hydra/launcher=batched"


def refusal(run_cfg: RunConfig) -> ConfigValueError | None:
    """Why this job cannot be trained in a population (one line naming the key), or None."""
    optimizer, model, trainer = run_cfg.optimizer, run_cfg.model, run_cfg.trainer
    checks: list[tuple[bool, str, Any, str]] = [
        (
            optimizer.name in HYPERPARAMETERS,
            "optimizer.name",
            optimizer.name,
            f"one of {', '.join(HYPERPARAMETERS)} under {LAUNCHER} (the others are not batched yet)",
        ),
        (
            getattr(optimizer, "hvp", "forward") in FINITE_DIFFERENCES,
            "optimizer.hvp",
            getattr(optimizer, "hvp", "forward"),
            f"one of {', '.join(FINITE_DIFFERENCES)} under {LAUNCHER} "
            "(the written-out backward of a linear chain is first order: no double backward)",
        ),
        (
            getattr(optimizer, "offset", "taylor") in BATCHED_OFFSETS,
            "optimizer.offset",
            getattr(optimizer, "offset", "taylor"),
            f"one of {', '.join(BATCHED_OFFSETS)} under {LAUNCHER} (the carried loss plane is not batched yet)",
        ),
        (
            model.name in BATCHED_MODELS,
            "model.name",
            model.name,
            f"one of {', '.join(BATCHED_MODELS)} under {LAUNCHER} (models with buffers are not batched yet)",
        ),
        (
            not getattr(model, "batch_norm", False),
            "model.batch_norm",
            getattr(model, "batch_norm", False),
            f"false under {LAUNCHER} (batch-norm running statistics are not batched yet)",
        ),
        (trainer.devices == 1, "trainer.devices", trainer.devices, f"1 under {LAUNCHER} (one process per population)"),
        (
            not trainer.twin or trainer.twin_hvp in FINITE_DIFFERENCES,
            "trainer.twin_hvp",
            trainer.twin_hvp,
            f"one of {', '.join(FINITE_DIFFERENCES)} under {LAUNCHER} "
            "(the written-out backward of a linear chain is first order: no double backward)",
        ),
        (
            not trainer.compile,
            "trainer.compile",
            trainer.compile,
            f"false under {LAUNCHER} (the population forward is not compiled)",
        ),
        (
            trainer.precision is Precision.fp32,
            "trainer.precision",
            trainer.precision.value,
            f"fp32 under {LAUNCHER} (autocast is not batched yet)",
        ),
    ]
    for ok, key, value, allowed in checks:
        if not ok:
            return ConfigValueError(key, value, allowed)
    if trainer.twin:
        try:  # the twin's own checks (an optimizer with a twin, the settings its derivation assumes)
            twin_config(optimizer, True, trainer.twin_hvp)
        except ConfigValueError as error:
            return error
    return None


@dataclass
class Member:
    """One job of the population: its checked config, run dir and local log."""

    run_cfg: RunConfig
    run_dir: Path
    key: str
    cfg: DictConfig  # the job's full config (with its hydra node), for its W&B run at the end
    summary: dict[str, Any] = field(default_factory=dict)
    logger: MultiLogger | None = None
    batches: BatchIterator | None = None
    checkpoints: ckpt.CheckpointManager | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    last_geometry: dict[str, float] = field(default_factory=dict)
    last_twin: dict[str, float] = field(default_factory=dict)  # twin/* at the last log step (trainer.twin)
    geometry: GeometryProbe | None = None  # its geom/* metrics (metrics.every > 0), on the population's scratch model
    alive: bool = True


@dataclass
class StepBuffers:
    """Where a step of a population's weights (``[M, N]``, a row per member) writes: its gradient, as
    views per pass of members (by parameter name) and as the optimizer's column blocks, and a twin's
    finite-difference buffers (perturbed weights and their gradients, per slot; see gradient_at)."""

    gradient: Tensor
    pass_params: list[dict[str, Tensor]]
    pass_gradients: list[dict[str, Tensor]]
    gradient_blocks: list[Tensor]
    perturbed: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


def decayed_parameters(model: nn.Module, no_decay: list[str]) -> dict[str, bool]:
    """Which parameters the single run puts in its weight-decayed group."""
    groups = param_groups_weight_decay(model, 1.0, no_decay)
    decayed_ids = {id(p) for group in groups if group["weight_decay"] > 0 for p in group["params"]}
    return {name: id(p) in decayed_ids for name, p in model.named_parameters()}


# On a CPU, members whose forward and backward run in one pass share its dispatch and Python costs,
# which is the whole gain for a small model; a compute-bound model gains nothing from a wider pass,
# and its activations then outgrow the caches. Measured on the 2-core machine (s per step of 16
# members): the tiny ViT (5.36M parameters) in passes of 16: 5.6-6.2, 8: 3.2-3.5, 4: 2.8-3.0,
# 2: 2.8-3.0; the MLP (26k) and the CNN (19k) are fastest in one pass. On a GPU one pass is the point.
CPU_PASS_PARAMETERS = 24_000_000


def pass_width(members_per_pass: int, members: int, parameters: int, device: torch.device) -> int:
    """Members per forward-backward pass: ``members_per_pass`` (hydra.launcher.members_per_pass)
    when > 0; else (auto) all members, except on a CPU when their parameters together exceed
    CPU_PASS_PARAMETERS: then as few even passes as keep each under it."""
    if members_per_pass > 0:
        return min(members_per_pass, members)
    if device.type != "cpu":
        return members
    passes = max(1, math.ceil(members * parameters / CPU_PASS_PARAMETERS))
    return math.ceil(members / passes)


def member_eval_batch(batch_size: int, examples: int, width: int, passes: int) -> int:
    """Each member's evaluation batch on a split of ``examples``, when a forward runs ``width``
    members (``passes`` passes; ``batch_size``: the single run's evaluation batch). A forward holds
    every member's activations, so a pass of members sees 1/width of the run's batch: the memory of one
    run's evaluation. A model split into passes (compute-bound, see CPU_PASS_PARAMETERS) gets 1/width
    of the run's actual forward, the split if smaller than a batch, which keeps its activations in
    the caches as one run's are (tiny ViT, digits: 13.1-13.6 s instead of 16.5-17.3 for 16 members);
    a one-pass population keeps the larger batch, whose fewer forwards are what a small model pays
    for (MLP: 9.9 ms instead of 17.0)."""
    run_forward = batch_size if passes == 1 else min(batch_size, examples)
    return max(1, math.ceil(run_forward / width))


class Population:
    def __init__(self, members: list[Member], members_per_pass: int = 0) -> None:
        self.members = members
        first = members[0].run_cfg
        self.trainer = first.trainer
        self.device = resolve_device(first.trainer.device)
        # The single run seeds before building the data; the data's builders draw from their own
        # generators, so building it once for every member leaves each member's model init intact.
        ckpt.seed_everything(first.seed)
        self.data = DATASETS.build(first.data.name, first.data, self.device)
        self.task = TASKS[self.data.spec.task]()
        models = []
        for member in members:
            ckpt.seed_everything(member.run_cfg.seed)  # as memexp.train.build_run: seed, then build
            models.append(MODELS.build(first.model.name, first.model, self.data.spec).to(self.device))
            member.batches = self.data.train_iterator(self.trainer.batch_size, seed=member.run_cfg.seed)
        # Metrics: a real module takes each member's weights in turn, with an optimizer of the member's
        # config on it (never stepped: the metrics read its hyperparameters), so every geom/* value
        # comes from the single run's code (memexp.metrics.GeometryProbe).
        scratch = copy.deepcopy(models[0]) if first.metrics.every > 0 else None
        stacked, buffers = stack_module_state(models)
        if buffers:
            raise ConfigValueError("model.name", first.model.name, f"a model without buffers under {LAUNCHER}")
        decayed = decayed_parameters(models[0], list(first.optimizer.no_decay))
        # One [M, N] tensor holds every parameter of every member, a row per member (its N weights, the
        # weight-decayed parameters first). The optimizer then updates the whole population in a few
        # passes over two column blocks (decayed, not), the gradient arrives as one [M, N] tensor (one
        # copy in the backward of the split), and a checkpoint slices a member's row out.
        self.names = sorted(stacked, key=lambda name: not decayed[name])  # stable: model order within
        self.shapes = {name: stacked[name].shape[1:] for name in self.names}
        self.sizes = [stacked[name][0].numel() for name in self.names]
        self.flat = torch.cat([stacked[name].detach().flatten(1) for name in self.names], dim=1)
        width = pass_width(members_per_pass, len(members), self.flat.shape[1], self.device)
        self.passes = [slice(start, min(start + width, len(members))) for start in range(0, len(members), width)]
        # Each pass differentiates with respect to its members' parameters as views of the flat tensor
        # (leaves of its graph, made once), and its gradients are copied into the rows of one [M, N]
        # gradient: 0.09-0.16 ms a step less on the MLP than a graph through a split of the flat
        # tensor, whose backward concatenates the gradients.
        self.decayed_columns = sum(size for name, size in zip(self.names, self.sizes) if decayed[name])
        self.buffers = self.step_buffers(self.flat)
        # Tied weights (the GPT's embedding and head) are stacked once, under the first name; a checkpoint
        # lists every name, as the single run's state_dict does.
        canonical = {id(p): name for name, p in models[0].named_parameters()}
        self.tied = {
            name: canonical[id(p)]
            for name, p in models[0].named_parameters(remove_duplicate=False)
            if canonical[id(p)] != name
        }
        self.base = models[0].to("meta")  # the module structure only; its population_forward takes the stacked weights
        del models, stacked
        self.optimizer = BatchedOptimizer(
            first.optimizer.name,
            self.blocks(self.flat.detach()),
            1,
            member_hyperparameters([m.run_cfg.optimizer for m in members]),
            OptimizerOptions.of(first.optimizer, self.segments(decayed)),
        )
        # trainer.twin: each member's memoryless twins, trained in lockstep as populations of their own.
        self.twins = PopulationTwins(self, decayed) if first.trainer.twin else None
        self.base_lr = self.optimizer.hyper["lr"]
        steps_per_epoch = members[0].batches.steps_per_epoch  # type: ignore[union-attr]
        self.max_steps = self.trainer.epochs * steps_per_epoch if self.trainer.epochs else self.trainer.max_steps
        self.steps_per_epoch = steps_per_epoch
        self.batches = MemberBatches([m.batches for m in members])  # type: ignore[misc]
        # The schedule is the single run's LambdaLR on a unit learning rate: lr = base lr × factor.
        self._unit = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        self.scheduler = build_scheduler(self._unit, self.trainer, self.max_steps)
        self._unit.step()  # no gradient, no update: only tells the scheduler its optimizer has stepped
        self.eval_sets = self.data.eval_sets(self.trainer.eval_examples)
        self.scratch = scratch
        if scratch is not None:
            for member in members:
                optimizer_cfg = member.run_cfg.optimizer
                groups = param_groups_weight_decay(scratch, optimizer_cfg.weight_decay, optimizer_cfg.no_decay)
                optimizer = OPTIMIZERS.build(optimizer_cfg.name, groups, optimizer_cfg)
                member.geometry = GeometryProbe(
                    first.metrics, scratch, self.task.loss, optimizer, self.eval_sets["train"], self.max_steps
                )
        self.started = time.perf_counter()

        # Every model of BATCHED_MODELS computes its members' outputs from their stacked parameters.
        self.forward: Callable[..., Tensor] = self.base.population_forward  # type: ignore[assignment]
        # A model that is one linear chain on its input (the MLP without dropout, the deep linear
        # network) is trained with its backward written out, without autograd (linear_chain_gradients).
        self.linear_chain = (
            self.base.population_linear_chain() if isinstance(self.base, ChainPopulationForward) else None
        )
        # Every member on one input (an evaluation batch): [B, ...] -> [M, B, ...].
        self.forward_shared = partial(self.forward, shared_input=True)

    # ------------------------------------------------------------------------------------------
    def segments(self, decayed: dict[str, bool]) -> Segments:
        """The sizes of the parameter tensors in each column block (decayed, then not): the segments of
        a per-tensor sum (adaptive memory's per-tensor β_t, lion_k's norm kernels)."""
        return tuple(
            tuple(size for name, size in zip(self.names, self.sizes) if decayed[name] == in_decayed_block)
            for in_decayed_block in (True, False)
        )

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def lr_factor(self) -> float:
        return float(self._unit.param_groups[0]["lr"])

    def member_lr(self, index: int) -> float:
        return float(self.base_lr[index]) * self.lr_factor()  # as LambdaLR: base_lr * factor(step)

    def blocks(self, flat: Tensor) -> list[Tensor]:
        """``flat`` ([M, N]: parameters or gradients) as its two column blocks, weight-decayed then not."""
        return list(flat.split([self.decayed_columns, flat.shape[1] - self.decayed_columns], dim=1))

    def step_buffers(self, flat: Tensor) -> StepBuffers:
        """Fresh StepBuffers for weights ``flat`` ([M, N])."""
        gradient = torch.empty_like(flat)
        pass_params, pass_gradients = self.pass_views(flat, gradient)
        return StepBuffers(gradient, pass_params, pass_gradients, self.blocks(gradient))

    def pass_views(self, flat: Tensor, gradient: Tensor) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
        """Per pass of members, its parameters as views of ``flat``'s rows (leaves that require grad:
        what the autograd path differentiates with respect to) and its gradients as views of
        ``gradient``'s rows (where the pass writes them)."""
        params = [
            {name: p.requires_grad_(True) for name, p in self.stacked_params(flat[rows]).items()}
            for rows in self.passes
        ]
        return params, [self.stacked_params(gradient[rows]) for rows in self.passes]

    def stacked_params(self, flat: Tensor) -> dict[str, Tensor]:
        """Every parameter as a [rows, ...] view of ``flat`` (rows of the flat tensor; differentiable:
        one split)."""
        views = flat.split(self.sizes, dim=1)
        return {name: view.view(-1, *self.shapes[name]) for name, view in zip(self.names, views)}

    def member_params(self, index: int, flat: Tensor | None = None) -> dict[str, Tensor]:
        """Member ``index``'s parameters, as views of its row of the flat tensor (or of a copy of it)."""
        views = (self.flat if flat is None else flat).detach()[index].split(self.sizes)
        return {name: view.view(self.shapes[name]) for name, view in zip(self.names, views)}

    def evaluate_all(self) -> list[dict[str, float]]:
        """Every member's evaluation at once, in eval mode: memexp.train.evaluate_gap's keys and
        arithmetic (memexp.tasks.evaluate_members), each evaluation batch one forward per pass of members."""
        cfg, spec = self.members[0].run_cfg, self.data.spec
        batch_size = self.task.eval_batch_size(cfg.trainer.eval_batch_size, spec.input_shape, spec.num_classes)
        width = self.passes[0].stop - self.passes[0].start
        params = [self.stacked_params(self.flat[rows]) for rows in self.passes]

        def forward(xb: Tensor) -> Tensor:
            if len(params) == 1:
                return self.forward_shared(params[0], xb)
            return torch.cat([self.forward_shared(pass_params, xb) for pass_params in params])

        self.base.eval()
        try:
            results = {
                split: evaluate_members(
                    forward,
                    len(self.members),
                    self.task,
                    x,
                    y,
                    member_eval_batch(batch_size, len(x), width, len(self.passes)),
                )
                for split, (x, y) in self.eval_sets.items()
            }
        finally:
            self.base.train()
        members = range(len(self.members))
        return [gap_metrics(self.task, {split: r[index] for split, r in results.items()}) for index in members]

    def measure(self, step: int, flat_before: Tensor | None) -> None:
        """Every live member's geom/* metrics after this step's update, as its single run computes them:
        its weights (and those before the update) on the scratch model, its scheduled lr."""
        assert self.scratch is not None
        trainable = [(name, p) for name, p in self.scratch.named_parameters() if p.requires_grad]
        parameters = dict(trainable)
        for index, member in enumerate(self.members):
            if not member.alive or member.geometry is None:
                continue
            weights = self.member_params(index)
            with torch.no_grad():
                for name, param in trainable:
                    param.copy_(weights[name])
            if flat_before is not None:
                before = self.member_params(index, flat_before)  # views of the step's one copy, never written
                member.geometry.remember_weights([before[name] for name, _ in trainable])
            optimizer = member.geometry.optimizer
            for group in optimizer.param_groups:
                group["lr"] = self.member_lr(index)  # as the single run's scheduler leaves it after the step
            # The member's optimizer state, as its single run's optimizer holds it (Adam's second moment
            # preconditions geom/sharpness_precond; its step count dates the correction).
            optimizer.state.clear()
            for name, state in self.member_optimizer_state(index).items():
                optimizer.state[parameters[name]] = state
            if self.optimizer.last_betas is not None:
                # The member's β_t of this step, reported as its single run's am_sgd reports them
                # (last_stats: the metrics' geom/am_beta*).
                optimizer._end_step(beta_stats(list(self.optimizer.last_betas[index])))
            member.last_geometry = member.geometry.compute(step)
            member.logger.log(member.last_geometry, step)  # type: ignore[union-attr]

    def member_beta_stats(self) -> list[dict[str, float]] | None:
        """Each member's ``beta_mean``, ``beta_min``, ``beta_max`` of the last step (am_sgd's
        last_stats keys), or None for the other optimizers."""
        betas = self.optimizer.last_betas
        if betas is None:
            return None
        stats = torch.stack([betas.mean(dim=1), betas.amin(dim=1), betas.amax(dim=1)], dim=1).tolist()
        return [dict(zip(("beta_mean", "beta_min", "beta_max"), row)) for row in stats]

    def member_optimizer_state(self, index: int) -> dict[str, dict[str, Tensor]]:
        """Member ``index``'s optimizer state per parameter name, in its single run's optimizer's
        ``state[p]`` form (a copy of the member's row of each buffer, made at metrics steps only: the
        buffers stay contiguous column blocks, which the optimizer's step runs faster on). AdamW's
        also has its ``step``, a float32 tensor as torch keeps it."""
        rows = {b: torch.cat([block[index] for block in blocks]) for b, blocks in self.optimizer.state.items()}
        buffers = {b: self.member_params(0, row.unsqueeze(0)) for b, row in rows.items()}  # the row as a 1-member flat
        name, steps = self.optimizer.name, self.optimizer.steps
        step: dict[str, Any] = {}
        if name in ADAM_STEPS:  # a float32 tensor, as torch's Adam keeps it
            step = {"step": torch.tensor(float(steps))}
        elif name in ADAPTIVE_MEMORY_HYPERPARAMETERS:  # an int, as memexp's adaptive-memory optimizers keep it
            step = {"step": steps}
        return {name: {**step, **{b: views[name] for b, views in buffers.items()}} for name in self.names}

    def member_state_dict(self, index: int, flat: Tensor | None = None) -> dict[str, Tensor]:
        """Member ``index``'s weights (of ``flat``: a twin's; default the population's own) as its single
        run's ``model.state_dict()`` (tied names share one tensor, as there)."""
        weights = {name: p.detach().clone() for name, p in self.member_params(index, flat).items()}
        return {**weights, **{alias: weights[name] for alias, name in self.tied.items()}}

    def member_state(self, index: int, step: int, wall_time_s: float) -> dict[str, Any]:
        member = self.members[index]
        return {
            "step": step,
            "wall_time_s": wall_time_s,
            "model": self.member_state_dict(index),
            OPTIMIZER_STATE_KEY: self.optimizer.member_state(index),
            "scheduler": self.scheduler.state_dict(),
            "data": member.batches.state_dict(),  # type: ignore[union-attr]
            "rng": ckpt.rng_state(),
            "alive": member.alive,
            "population": [m.key for m in self.members],
            **({"twin": self.twins.member_state(index)} if self.twins is not None else {}),
        }

    def restore(self, states: list[dict[str, Any]]) -> int:
        with torch.no_grad():
            for index, (member, state) in enumerate(zip(self.members, states)):
                params = self.member_params(index)
                for name, param in params.items():
                    param.copy_(state["model"][name])
                self.optimizer.load_member_state(index, state[OPTIMIZER_STATE_KEY])
                member.batches.load_state_dict(state["data"])  # type: ignore[union-attr]
                member.alive = bool(state.get("alive", True))
                if self.twins is not None:
                    self.twins.load_member_state(index, state.get("twin"))
        self.scheduler.load_state_dict(states[0]["scheduler"])
        # The schedule's factor lives in the unit optimizer's lr, which a scheduler's state does not
        # hold (a single run's optimizer state does): without this the first step after a resume took
        # the schedule's initial factor.
        for group, factor in zip(self._unit.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = factor
        ckpt.set_rng_state(states[0]["rng"])
        return int(states[0]["step"])

    def latest_common_checkpoint(self) -> list[dict[str, Any]] | None:
        """Every member's checkpoint at the newest step all of them have (readable), or None."""
        managers = [m.checkpoints for m in self.members]
        common = set.intersection(*({step for step, _ in m.checkpoints()} for m in managers))  # type: ignore[union-attr]
        for step in sorted(common, reverse=True):
            states = []
            for manager in managers:
                try:
                    state = ckpt.load(manager.path_for(step), self.device)  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001 - unreadable: try an older common step
                    break
                if state.get("step") != step or OPTIMIZER_STATE_KEY not in state:
                    break
                states.append(state)
            if len(states) == len(managers):
                return states
        return None

    # ------------------------------------------------------------------------------------------
    def train(self) -> list[dict[str, Any]]:
        """The loop of memexp.train.train for every member at once. Returns the summaries."""
        trainer = self.trainer
        self.started = time.perf_counter()
        for member in self.members:
            member.checkpoints = ckpt.CheckpointManager(member.run_dir / "checkpoints", trainer.keep_checkpoints)
        step = 0
        resumed = self.latest_common_checkpoint() if trainer.resume is Resume.auto else None
        if resumed is not None:
            step = self.restore(resumed)
            self.started -= resumed[0].get("wall_time_s", 0.0)  # wall time counts every attempt
        for member in self.members:
            member.logger = MultiLogger([LocalLogger(member.run_dir)])
            member.logger.rewind(step)
            if member.alive:
                member.summary = {
                    "status": "running",
                    "step": step,
                    "max_steps": self.max_steps,
                    "run_dir": str(member.run_dir),
                }
                member.logger.summary(member.summary)
            else:
                member.summary = _read_summary(member.run_dir)
        progress = ProgressReporter(self.max_steps, trainer.progress, start=step)
        progress.message(f"population of {len(self.members)} members ({LAUNCHER})")
        if resumed is not None:
            progress.message(f"resumed from checkpoint at step {step}")

        def save_checkpoints(step: int) -> None:
            for index, member in enumerate(self.members):
                member.checkpoints.save(self.member_state(index, step, self.elapsed()), step)  # type: ignore[union-attr]

        loss_sum, loss_count = torch.zeros(len(self.members), device=self.device), 0
        with GracefulStop() as stop:
            try:
                self.base.train()
                while step < self.max_steps and any(m.alive for m in self.members):
                    measure = self.scratch is not None and self.members[0].geometry.due(step + 1)  # type: ignore[union-attr]
                    # The weights before a metrics step's update (update-to-weight ratio): one copy, that step only.
                    flat_before = self.flat.detach().clone() if measure else None
                    losses = self.train_step()
                    self.scheduler.step()
                    step += 1
                    loss_sum += losses.detach()
                    loss_count += 1
                    if step % trainer.log_every == 0 or step == self.max_steps:
                        batch_losses = (loss_sum / loss_count).tolist()
                        loss_sum.zero_()
                        loss_count = 0
                        self.log_step(step, batch_losses, progress)
                    if measure:
                        self.measure(step, flat_before)
                    if trainer.eval_every and step % trainer.eval_every == 0 and step < self.max_steps:
                        for member, evaluation in zip(self.members, self.evaluate_all()):
                            if member.alive:
                                member.last_eval = evaluation
                                member.logger.log(member.last_eval, step)  # type: ignore[union-attr]
                    if trainer.checkpoint_every and step % trainer.checkpoint_every == 0 and step < self.max_steps:
                        save_checkpoints(step)
                    if stop.pending is not None and step < self.max_steps:
                        save_checkpoints(step)
                        for member in self.members:
                            if member.alive:
                                member.summary.update(step=step, stopped_by=stop.name, wall_time_s=self.elapsed())
                                member.logger.summary(member.summary)  # type: ignore[union-attr]
                        progress.message(f"{stop.name} at step {step}: checkpoints saved")
                        stop.forward()
                final = self.evaluate_all() if any(m.alive for m in self.members) else []
                for index, member in enumerate(self.members):
                    if member.alive:
                        self.finish_member(index, step, "running", final[index])
                        if member.summary["status"] == "finished":
                            member.checkpoints.save(self.member_state(index, step, self.elapsed()), step)  # type: ignore[union-attr]
            except BaseException as error:
                if not (stop.forwarding or isinstance(error, Interrupted)):
                    for member in self.members:
                        if member.alive:
                            member.summary.update(
                                status="failed",
                                step=step,
                                error=f"{type(error).__name__}: {error}",
                                wall_time_s=self.elapsed(),
                            )
                            member.logger.summary(member.summary)  # type: ignore[union-attr]
                raise
            finally:
                progress.close()
                for member in self.members:
                    member.logger.close()  # type: ignore[union-attr]
        return [m.summary for m in self.members]

    def train_step(self) -> Tensor:
        """One update of every member on its next batch; returns the members' batch losses, [M]."""
        return self.step_on(*next(self.batches))

    def step_on(self, x: Tensor, y: Tensor) -> Tensor:
        """One update of every member on its batch (``x[m], y[m]``), then of their twins (trainer.twin)
        on the same batches; returns the members' batch losses, [M]."""
        lr = self.base_lr * self.lr_factor()
        frozen = [i for i, m in enumerate(self.members) if not m.alive]
        before = RNGSnapshot([self.flat]) if self.twins is not None else None
        losses = self.update(self.flat, self.optimizer, self.buffers, x, y, lr, frozen)
        if self.twins is not None:
            assert before is not None
            self.twins.step_alongside(x, y, lr, frozen, before)
        return losses

    def update(
        self,
        flat: Tensor,
        optimizer: BatchedOptimizer,
        buffers: StepBuffers,
        x: Tensor,
        y: Tensor,
        lr: Tensor,
        frozen: list[int],
    ) -> Tensor:
        """One step of the weights ``flat`` ([M, N]; the population's own or a twin's) by ``optimizer``
        on the batches ``x, y`` at the members' ``lr``, the rows ``frozen`` kept; returns the batch losses, [M]."""
        # A twin's H·v takes the gradients again at perturbed weights: the same dropout masks (the
        # generator rewound, as the single run's closure_hvp does), and the stream left as after one pass.
        replay = RNGSnapshot([flat]) if optimizer.corrects else None
        losses = self.gradients_into(buffers.pass_params, buffers.pass_gradients, buffers.gradient_blocks, x, y)
        frozen_rows = torch.tensor(frozen, dtype=torch.long) if frozen else None
        gradient_at = None
        if replay is not None:
            gradient_at = partial(self.gradient_at, params=optimizer.params, buffers=buffers, x=x, y=y, replay=replay)
        optimizer.step(buffers.gradient_blocks, lr, frozen_rows, gradient_at)
        return losses

    def gradients_into(
        self,
        pass_params: list[dict[str, Tensor]],
        pass_gradients: list[dict[str, Tensor]],
        gradient_blocks: list[Tensor],
        x: Tensor,
        y: Tensor,
    ) -> Tensor:
        """Every pass's losses and gradients (clipped per member as the run's closure clips), the
        gradients written into ``pass_gradients`` (views of the rows of the [M, N] gradient whose column
        blocks are ``gradient_blocks``). Returns the losses, [M]."""
        losses = [
            self.pass_gradients_into(params, x[rows], y[rows], gradients)
            for rows, params, gradients in zip(self.passes, pass_params, pass_gradients)
        ]
        if self.trainer.grad_clip > 0:
            clip_grad_norms_(gradient_blocks, self.trainer.grad_clip)
        return losses[0] if len(losses) == 1 else torch.cat(losses)  # one pass: no copy (16 µs of a 1.2 ms step)

    def gradient_at(
        self,
        vectors: list[Tensor],
        scale: Tensor,
        slot: int,
        params: list[Tensor],
        buffers: StepBuffers,
        x: Tensor,
        y: Tensor,
        replay: RNGSnapshot,
    ) -> list[Tensor]:
        """Every member's gradients on the batch ``x, y`` at θ + scale·v (memexp.batched.memoryless.GradientAt;
        θ: the column blocks ``params``), in the column blocks of gradient buffer ``slot``. The perturbed
        weights and the gradients live in ``buffers``, made on the first call (no 3 fresh [M, N] tensors a step)."""
        if slot not in buffers.perturbed:
            buffers.perturbed[slot] = (torch.empty_like(self.flat), torch.empty_like(self.flat))
        perturbed, gradient = buffers.perturbed[slot]
        pass_params, pass_gradients = self.pass_views(perturbed, gradient)
        gradient_blocks = self.blocks(gradient)
        with torch.no_grad():
            for weight, param, vector in zip(self.blocks(perturbed), params, vectors):
                torch.addcmul(param, vector, scale, out=weight)
        after = RNGSnapshot([self.flat])
        replay.restore()
        try:
            with torch.enable_grad():  # the optimizer's step runs under no_grad; the autograd path needs it
                self.gradients_into(pass_params, pass_gradients, gradient_blocks, x, y)
        finally:
            after.restore()
        return gradient_blocks

    def pass_gradients_into(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor, gradients: dict[str, Tensor]
    ) -> Tensor:
        """One pass's losses ``[width]``, the gradients of their sum written into ``gradients`` (views of
        the population's gradient rows). The members are independent: the gradient of their summed
        losses is each one's own."""
        if self.linear_chain is not None:  # the backward written out, no autograd
            loss_and_gradient = self.task.member_loss_and_gradient
            return linear_chain_gradients(params, self.linear_chain, x, y, loss_and_gradient, gradients)
        losses = self.task.member_loss(self.forward(params, x), y)
        for gradient, grad in zip(gradients.values(), torch.autograd.grad(losses.sum(), list(params.values()))):
            gradient.copy_(grad)
        return losses.detach()

    def log_step(self, step: int, batch_losses: list[float], progress: ProgressReporter) -> None:
        epoch = step / self.steps_per_epoch
        betas = self.member_beta_stats()
        twins = self.twins.metrics(batch_losses) if self.twins is not None else None
        for index, member in enumerate(self.members):
            if not member.alive:
                continue
            lr = self.member_lr(index)
            logged = {"train/batch_loss": batch_losses[index], "lr": lr, "epoch": epoch}
            if betas is not None:  # as the single run logs adaptive memory's β_t at every log step
                logged.update({f"optim/{key}": value for key, value in betas[index].items()})
            if twins is not None:
                member.last_twin = twins[index]
                logged.update(member.last_twin)
            member.logger.log(logged, step)  # type: ignore[union-attr]
            if not math.isfinite(batch_losses[index]):
                progress.message(
                    f"member {index} ({member.run_dir}): non-finite training loss ({batch_losses[index]}) "
                    f"at step {step}: it stops (diverged); the others go on"
                )
                self.finish_member(index, step, "diverged")
        alive = [loss for loss, m in zip(batch_losses, self.members) if m.alive]
        progress.update(step, sum(alive) / len(alive) if alive else float("nan"), self.member_lr(0))

    def finish_member(self, index: int, step: int, status: str, evaluation: dict[str, float] | None = None) -> None:
        """The end of memexp.train.train for one member: final evaluation (``evaluation``, when the
        population's was just taken), status, summary."""
        member = self.members[index]
        # A member ending alone (diverged) pays one population evaluation: rare, and one code path.
        member.last_eval = self.evaluate_all()[index] if evaluation is None else evaluation
        member.logger.log(member.last_eval, step)  # type: ignore[union-attr]
        if status == "running":
            status = "finished" if all(math.isfinite(v) for v in member.last_eval.values()) else "diverged"
        member.summary.update(
            status=status,
            step=step,
            wall_time_s=self.elapsed(),
            lr=self.member_lr(index),
            **member.last_eval,
            **member.last_geometry,
            **member.last_twin,
        )
        if member.geometry is not None:
            member.summary["metrics_time_s"] = sum(member.geometry.seconds)
        member.summary.pop("stopped_by", None)
        member.logger.summary(member.summary)  # type: ignore[union-attr]
        member.alive = False


def _read_summary(run_dir: Path) -> dict[str, Any]:
    from memexp.rundir import read_summary

    return read_summary(run_dir)[0] or {}
