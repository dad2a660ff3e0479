"""`memexp train`: one training run (or one job of a sweep), readable top to bottom.

    compose config (Hydra) -> check values -> build data, model, optimizer (nothing written yet)
    -> open loggers -> loop: closure step, log, evaluate train-subset vs held-out, checkpoint
    -> summary.json + final table.

A bad value stops before anything is written (Hydra's fresh run dir is removed again). A
non-finite loss ends the run with status ``diverged`` and a normal return, so a sweep goes on.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from memexp import checkpoint as ckpt
from memexp.config import LoggerConfig, MetricsConfig, Precision, TrainerConfig, register_configs
from memexp.data import DATASETS, BatchIterator, DataBundle
from memexp.errors import ConfigValueError, MemexpError
from memexp.logging import LocalLogger, MetricLogger, MultiLogger
from memexp.logging.progress import ProgressReporter, print_summary_table
from memexp.models import MODELS
from memexp.optim import OPTIMIZERS, param_groups_weight_decay
from memexp.schedules import build_scheduler
from memexp.tasks import TASKS, Task, evaluate

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


def build_run(cfg: RunConfig) -> Run:
    trainer = cfg.trainer
    ckpt.seed_everything(cfg.seed)
    device = resolve_device(trainer.device)
    data = DATASETS.build(cfg.data.name, cfg.data, device)
    task = TASKS[data.spec.task]()
    model = MODELS.build(cfg.model.name, cfg.model, data.spec).to(device)
    groups = param_groups_weight_decay(model, cfg.optimizer.weight_decay, cfg.optimizer.no_decay)
    optimizer = OPTIMIZERS.build(cfg.optimizer.name, groups, cfg.optimizer)
    batches = data.train_iterator(trainer.batch_size, seed=cfg.seed)
    max_steps = trainer.epochs * batches.steps_per_epoch if trainer.epochs else trainer.max_steps
    return Run(
        cfg=cfg,
        device=device,
        data=data,
        task=task,
        model=model,
        forward=torch.compile(model) if trainer.compile else model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, trainer, max_steps),
        batches=batches,
        eval_sets=data.eval_sets(trainer.eval_examples),
        max_steps=max_steps,
        autocast=autocast_for(device, trainer.precision),
    )


def evaluate_gap(run: Run) -> dict[str, float]:
    """train/* on a fixed training subset and val/* on the held-out set, same size, same code, eval
    mode; gap/* = held-out minus train."""
    results = {
        split: evaluate(run.forward, run.task, x, y, run.cfg.trainer.eval_batch_size, run.autocast)
        for split, (x, y) in run.eval_sets.items()
    }
    logged = {f"{split}/{name}": value for split, values in results.items() for name, value in values.items()}
    logged.update({f"gap/{name}": value for name, value in run.task.gap(results["train"], results["val"]).items()})
    return logged


def training_state(run: Run, step: int) -> dict[str, Any]:
    return {
        "step": step,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "data": run.batches.state_dict(),
        "rng": ckpt.rng_state(),
    }


def restore_training_state(run: Run, state: dict[str, Any]) -> int:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.batches.load_state_dict(state["data"])
    ckpt.set_rng_state(state["rng"])
    return int(state["step"])


def train(
    run: Run, run_dir: Path, loggers: list[MetricLogger], progress: ProgressReporter | None = None
) -> dict[str, Any]:
    """The loop. Returns the summary (also written to ``summary.json``)."""
    trainer, started = run.cfg.trainer, time.perf_counter()
    checkpoints = ckpt.CheckpointManager(run_dir / "checkpoints", trainer.keep_checkpoints)
    step = 0
    resumed = checkpoints.load_latest(run.device)
    if resumed is not None:
        step = restore_training_state(run, resumed)
    logger = MultiLogger(loggers)
    summary: dict[str, Any] = {"status": "running", "step": step, "max_steps": run.max_steps, "run_dir": str(run_dir)}
    logger.summary(summary)
    progress = progress or ProgressReporter(run.max_steps, trainer.progress, start=step)
    if resumed is not None:
        progress.message(f"resumed from checkpoint at step {step}")
    params = [p for p in run.model.parameters() if p.requires_grad]
    loss_sum, loss_count = torch.zeros((), device=run.device), 0
    x: Tensor = torch.empty(0)
    y: Tensor = torch.empty(0)

    def closure(create_graph: bool = False) -> Tensor:
        # The standard protocol: optimizers that need extra gradients (e.g. for a Hessian-vector
        # product) call this again themselves; hvp=double_backward asks for create_graph=True.
        run.optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            loss = run.task.loss(run.forward(x), y)
        loss.backward(create_graph=create_graph)
        if trainer.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, trainer.grad_clip)
        return loss

    status, last_eval = "running", {}
    try:
        run.model.train()
        while step < run.max_steps:
            x, y = next(run.batches)
            loss = run.optimizer.step(closure)
            run.scheduler.step()
            step += 1
            loss_sum += loss.detach()  # no host sync here: the loss is read only at log steps
            loss_count += 1
            if step % trainer.log_every == 0 or step == run.max_steps:
                batch_loss = (loss_sum / loss_count).item()
                loss_sum.zero_()
                loss_count = 0
                lr = run.optimizer.param_groups[0]["lr"]
                epoch = step / run.batches.steps_per_epoch
                logger.log({"train/batch_loss": batch_loss, "lr": lr, "epoch": epoch}, step)
                progress.update(step, batch_loss, lr)
                if not math.isfinite(batch_loss):
                    status = "diverged"
                    progress.message(f"non-finite training loss ({batch_loss}) at step {step}: stopping (diverged)")
                    break
            if trainer.eval_every and step % trainer.eval_every == 0 and step < run.max_steps:
                last_eval = evaluate_gap(run)
                logger.log(last_eval, step)
            if trainer.checkpoint_every and step % trainer.checkpoint_every == 0 and step < run.max_steps:
                checkpoints.save(training_state(run, step), step)
        last_eval = evaluate_gap(run)
        logger.log(last_eval, step)
        if status == "running":
            status = "finished" if all(math.isfinite(v) for v in last_eval.values()) else "diverged"
        if status == "finished":
            checkpoints.save(training_state(run, step), step)
        elapsed = time.perf_counter() - started
        summary.update(
            status=status,
            step=step,
            wall_time_s=elapsed,
            lr=run.optimizer.param_groups[0]["lr"],
            **last_eval,
        )
        logger.summary(summary)
    except BaseException as error:
        summary.update(
            status="failed",
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


# ----------------------------------------------------------------------------------------------
# The Hydra app


def remove_fresh_run_dir(run_dir: Path, job_name: str) -> None:
    """Hydra creates the run dir (with .hydra/ and the job log) before the task runs. When the task
    stops on bad input, remove it again, but only if it holds nothing else (never a resumed run's)."""
    import shutil

    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", f"{job_name}.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.parent
        # A multirun's sweep dir holding only Hydra's multirun.yaml goes too.
        if parent.is_dir() and {p.name for p in parent.iterdir()} <= {"multirun.yaml"}:
            shutil.rmtree(parent, ignore_errors=True)


def open_loggers(cfg: DictConfig, run_cfg: RunConfig, run_dir: Path) -> list[MetricLogger]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    loggers: list[MetricLogger] = [LocalLogger(run_dir)]
    if run_cfg.logger.wandb is not None and run_cfg.logger.wandb.mode != "disabled":
        hydra_cfg = HydraConfig.get()
        overrides = hydra_cfg.job.override_dirname
        if hydra_cfg.mode == RunMode.MULTIRUN:
            name, group = overrides or run_dir.name, f"{cfg.task_name}-{Path(hydra_cfg.sweep.dir).name}"
        else:
            name, group = (f"{run_dir.name}_{overrides}" if overrides else run_dir.name), None
        try:
            from memexp.logging.wandb_logger import WandbLogger

            resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
            loggers.append(WandbLogger(run_cfg.logger.wandb, run_dir, resolved, name, group))  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - W&B trouble is a warning; the local log goes on
            import warnings

            warnings.warn(f"W&B is disabled for this run: {error}", stacklevel=2)
    return loggers


def run_job(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        run_cfg = check_config(cfg)
        run = build_run(run_cfg)
    except MemexpError as error:
        remove_fresh_run_dir(run_dir, hydra_cfg.job.name)
        print(f"memexp: error: {error}", file=sys.stderr)
        sys.exit(2)
    summary = train(run, run_dir, open_loggers(cfg, run_cfg, run_dir))
    if run_cfg.trainer.progress.value != "off":
        print_summary_table(summary)
    value = summary.get("val/loss")
    return value if isinstance(value, float) else None


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_app(cfg: DictConfig) -> float | None:
    return run_job(cfg)


def main() -> None:
    register_configs()
    hydra_app()
