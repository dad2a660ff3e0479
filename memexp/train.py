"""One training run, readable top to bottom (memexp.job wraps it into the `memexp train` command).

    check values -> build data, model, optimizer (nothing written yet)
    -> loop: closure step, log, evaluate train subset / validation / test, checkpoint
    -> summary.json.

A non-finite loss ends the run with status ``diverged`` and a normal return, so a sweep goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from memexp import checkpoint as ckpt
from memexp import distributed
from memexp.config import LoggerConfig, MetricsConfig, Precision, Resume, TrainerConfig
from memexp.config import register_configs as register_configs  # the config store callers compose with
from memexp.data import DATASETS, BatchIterator, DataBundle
from memexp.errors import ConfigValueError
from memexp.logging import MetricLogger, MultiLogger
from memexp.logging.progress import ProgressReporter
from memexp.metrics import GeometryProbe
from memexp.metrics.optimizer_family import memory_family
from memexp.models import MODELS
from memexp.optim import OPTIMIZERS, param_groups_weight_decay
from memexp.optim.base import training_closure
from memexp.optim.memory import MemoryFamily
from memexp.rundir import CHECKPOINT_DIR, Status
from memexp.schedules import build_scheduler
from memexp.signals import GracefulStop, Interrupted
from memexp.tasks import TASKS, Task, evaluate
from memexp.twin import Twin

CONFIG_GROUPS = ("optimizer", "model", "data", "trainer", "logger", "metrics")


def config_dir() -> str:
    """conf/ next to the package in a source checkout, else the copy shipped as ``memexp.conf``."""
    source_conf = Path(__file__).resolve().parent.parent / "conf"
    if (source_conf / "train.yaml").is_file():
        return str(source_conf)
    from importlib.resources import files

    return str(files("memexp.conf"))


@dataclass
class RunConfig:
    """The composed config as checked dataclass instances."""

    seed: int
    optimizer: Any
    model: Any
    data: Any
    trainer: TrainerConfig
    logger: LoggerConfig
    metrics: MetricsConfig


def check_config(cfg: DictConfig) -> RunConfig:
    groups = {}
    for group in CONFIG_GROUPS:
        node = OmegaConf.to_object(cfg[group])
        try:
            node.check()
        except ConfigValueError as error:
            raise error.with_prefix(group) from None
        groups[group] = node
    for group, registry in (("optimizer", OPTIMIZERS), ("model", MODELS), ("data", DATASETS)):
        registry.get(groups[group].name)  # an unknown name fails here, naming the key
    return RunConfig(seed=cfg.seed, **groups)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("trainer.device", name, "auto or cpu (this machine has no CUDA device)")
    return device


def resolve_rank_device(name: str) -> torch.device:
    """The device of this process: with data-parallel ranks on CUDA, GPU ``LOCAL_RANK``."""
    device = resolve_device(name)
    if device.type == "cuda" and distributed.launched_by_torchrun():
        device = torch.device("cuda", distributed.local_rank())
        torch.cuda.set_device(device)
    return device


def autocast_for(device: torch.device, precision: Precision) -> Callable[[], AbstractContextManager[Any]]:
    if precision is Precision.bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


@dataclass
class Run:
    """Everything the loop needs, built before anything is written to disk."""

    cfg: RunConfig
    device: torch.device
    data: DataBundle
    task: Task
    model: nn.Module
    forward: nn.Module  # the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: BatchIterator
    eval_sets: dict[str, tuple[Tensor, Tensor]]
    max_steps: int
    autocast: Callable[[], AbstractContextManager[Any]]
    geometry: GeometryProbe | None = None  # geom/* metrics on a fixed probe batch; None: metrics off
    twin: Twin | None = None  # trainer.twin: the memoryless twin trained alongside (twin/* metrics)


def build_run(cfg: RunConfig) -> Run:
    trainer = cfg.trainer
    ckpt.seed_everything(cfg.seed)
    device = resolve_rank_device(trainer.device)
    distributed.init(device)
    distributed.check_batch(trainer.batch_size)
    data = DATASETS.build(cfg.data.name, cfg.data, device)
    task = TASKS[data.spec.task]()
    model = MODELS.build(cfg.model.name, cfg.model, data.spec).to(device)
    autocast = autocast_for(device, trainer.precision)
    twin = Twin(cfg.optimizer, trainer, model, task.loss, autocast) if trainer.twin else None  # initial weights
    groups = param_groups_weight_decay(model, cfg.optimizer.weight_decay, cfg.optimizer.no_decay)
    optimizer = OPTIMIZERS.build(cfg.optimizer.name, groups, cfg.optimizer)
    batches = data.train_iterator(trainer.batch_size, seed=cfg.seed)
    max_steps = trainer.epochs * batches.steps_per_epoch if trainer.epochs else trainer.max_steps
    eval_sets = data.eval_sets(trainer.eval_examples)
    geometry = None
    if cfg.metrics.every > 0:
        # The probe batch is fixed once: a slice of the same training subset the gap is measured on,
        # identical for every optimizer and seed (the subset is part of the data, not of the run).
        geometry = GeometryProbe(cfg.metrics, model, task.loss, optimizer, eval_sets["train"], max_steps)
    return Run(
        cfg=cfg,
        device=device,
        data=data,
        task=task,
        model=model,
        forward=wrap_model(model, device, trainer.compile),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, trainer, max_steps),
        batches=batches,
        eval_sets=eval_sets,
        max_steps=max_steps,
        autocast=autocast,
        geometry=geometry,
        twin=twin,
    )


def wrap_model(model: nn.Module, device: torch.device, compile_model: bool) -> nn.Module:
    """DDP across ranks when data-parallel, then torch.compile when asked."""
    forward = model
    if distributed.is_active():
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(forward) if compile_model else forward


def evaluate_gap(run: Run) -> dict[str, float]:
    """train/* on a fixed training subset, val/* on the validation split and test/* on the held-out
    test split, same code, eval mode; gap/* = test minus train (equally sized sets)."""
    results = {
        split: evaluate(
            run.forward,
            run.task,
            distributed.shard(x),
            distributed.shard(y),
            run.task.eval_batch_size(
                run.cfg.trainer.eval_batch_size, run.data.spec.input_shape, run.data.spec.num_classes
            ),
            run.autocast,
            reduce=distributed.all_reduce_sum,
        )
        for split, (x, y) in run.eval_sets.items()
    }
    return gap_metrics(run.task, results)


def gap_metrics(task: Task, results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The logged evaluation keys from each split's results: ``<split>/<metric>`` and ``gap/*``."""
    logged = {f"{split}/{name}": value for split, values in results.items() for name, value in values.items()}
    logged.update({f"gap/{name}": value for name, value in task.gap(results["train"], results["test"]).items()})
    return logged


def training_state(run: Run, step: int, wall_time_s: float = 0.0) -> dict[str, Any]:
    return {
        "step": step,
        "wall_time_s": wall_time_s,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "data": run.batches.state_dict(),
        "rng": ckpt.rng_state(),
        **({"twin": run.twin.state_dict()} if run.twin is not None else {}),
    }


def restore_training_state(run: Run, state: dict[str, Any]) -> int:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.batches.load_state_dict(state["data"])
    ckpt.set_rng_state(state["rng"])
    if run.twin is not None:
        run.twin.load_state_dict(state.get("twin"))
    return int(state["step"])


def train(
    run: Run, run_dir: Path, loggers: list[MetricLogger], progress: ProgressReporter | None = None
) -> dict[str, Any]:
    """The loop. Returns the summary (also written to ``summary.json``)."""
    trainer, started = run.cfg.trainer, time.perf_counter()
    checkpoints = ckpt.CheckpointManager(run_dir / CHECKPOINT_DIR, trainer.keep_checkpoints)
    step = 0
    resumed = checkpoints.load_latest(run.device) if trainer.resume is Resume.auto else None
    if resumed is not None:
        step = restore_training_state(run, resumed)
        started -= resumed.get("wall_time_s", 0.0)  # wall time counts every attempt
    logger = MultiLogger(loggers)
    logger.rewind(step)  # drop what a killed run logged after its last checkpoint
    summary: dict[str, Any] = {
        "status": Status.RUNNING.value,  # plain strings: W&B's summary does not know enums
        "step": step,
        "max_steps": run.max_steps,
        "run_dir": str(run_dir),
    }
    logger.summary(summary)
    progress = progress or ProgressReporter(run.max_steps, trainer.progress, start=step)
    if resumed is not None:
        progress.message(f"resumed from checkpoint at step {step}")
    params = [p for p in run.model.parameters() if p.requires_grad]
    world, is_main = distributed.world_size(), distributed.rank() == 0

    def save_checkpoint(step: int) -> None:
        if is_main:  # ranks hold identical state; one writer
            checkpoints.save(training_state(run, step, time.perf_counter() - started), step)

    loss_sum, loss_count = torch.zeros((), device=run.device), 0
    x: Tensor = torch.empty(0)
    y: Tensor = torch.empty(0)

    # Reads the loop's current batch (x, y), rebound every step.
    closure = training_closure(
        run.optimizer, run.forward, run.task.loss, lambda: (x, y), params, trainer.grad_clip, run.autocast
    )

    status, last_eval, last_geometry, last_twin = Status.RUNNING, {}, {}, {}
    adaptive_memory = memory_family(run.optimizer) is MemoryFamily.adaptive_memory  # β_t to log
    geometry = run.geometry if is_main else None  # metrics need no other rank: rank 0 logs them
    with GracefulStop() as stop:
        try:
            run.model.train()
            while step < run.max_steps:
                x, y = next(run.batches)
                if world > 1:
                    x, y = distributed.shard(x), distributed.shard(y)  # this rank's slice of the global batch
                measure = geometry is not None and geometry.due(step + 1)
                if measure:
                    geometry.remember_weights()  # for the update-to-weight ratio; metrics steps only
                if run.twin is None:
                    loss = run.optimizer.step(closure)
                else:
                    loss = run.twin.step_alongside(lambda: run.optimizer.step(closure), run.optimizer, x, y)
                run.scheduler.step()
                step += 1
                loss_sum += loss.detach()  # no host sync here: the loss is read only at log steps
                loss_count += 1
                if step % trainer.log_every == 0 or step == run.max_steps:
                    batch_loss = (distributed.all_reduce_sum(loss_sum) / (loss_count * world)).item()
                    loss_sum.zero_()
                    loss_count = 0
                    lr = run.optimizer.param_groups[0]["lr"]
                    epoch = step / run.batches.steps_per_epoch
                    logged = {"train/batch_loss": batch_loss, "lr": lr, "epoch": epoch}
                    if adaptive_memory:  # β_t at every log step, not only at metrics passes
                        stats = run.optimizer.last_stats  # computed lazily: one transfer for all its values
                        logged.update({f"optim/{k}": v for k, v in stats.items() if k.startswith("beta_")})
                    if run.twin is not None:
                        last_twin = run.twin.metrics(batch_loss)
                        logged.update(last_twin)
                    logger.log(logged, step)
                    progress.update(step, batch_loss, lr)
                    if not math.isfinite(batch_loss):
                        status = Status.DIVERGED
                        progress.message(f"non-finite training loss ({batch_loss}) at step {step}: stopping (diverged)")
                        break
                if measure:
                    last_geometry = geometry.compute(step)
                    logger.log(last_geometry, step)
                if trainer.eval_every and step % trainer.eval_every == 0 and step < run.max_steps:
                    last_eval = evaluate_gap(run)
                    logger.log(last_eval, step)
                if trainer.checkpoint_every and step % trainer.checkpoint_every == 0 and step < run.max_steps:
                    save_checkpoint(step)
                if stop.pending is not None and step < run.max_steps:
                    # Preemption / time limit: checkpoint a consistent state, then let the scheduler act.
                    save_checkpoint(step)
                    summary.update(step=step, stopped_by=stop.name, wall_time_s=time.perf_counter() - started)
                    logger.summary(summary)
                    progress.message(f"{stop.name} at step {step}: checkpoint saved")
                    stop.forward()
            last_eval = evaluate_gap(run)
            if resumed is None or resumed["step"] < run.max_steps:  # a final checkpoint follows its logged eval
                logger.log(last_eval, step)
            if status is Status.RUNNING:
                status = Status.FINISHED if all(math.isfinite(v) for v in last_eval.values()) else Status.DIVERGED
            if status is Status.FINISHED:
                save_checkpoint(step)
            summary.update(
                status=status.value,
                step=step,
                wall_time_s=time.perf_counter() - started,
                lr=run.optimizer.param_groups[0]["lr"],
                **last_eval,
                **last_geometry,
                **last_twin,
            )
            if geometry is not None:
                summary["metrics_time_s"] = sum(geometry.seconds)  # the cost of the geom/* passes
            summary.pop("stopped_by", None)
            logger.summary(summary)
        except BaseException as error:
            # A stop requested by a signal (the scheduler requeues, or the user stops) leaves the
            # run resumable, status running; anything else is a failure.
            if not (stop.forwarding or isinstance(error, Interrupted)):
                summary.update(
                    status=Status.FAILED.value,
                    step=step,
                    error=f"{type(error).__name__}: {error}",
                    wall_time_s=time.perf_counter() - started,
                )
                logger.summary(summary)
            raise
        finally:
            progress.close()
            logger.close()
    return summary
