"""``hydra/launcher=batched``: a sweep's jobs that differ only in batchable keys train together.

The launcher receives the sweep's jobs like Hydra's BasicLauncher, composes each job's config with
Hydra's own ``load_sweep_config`` and gives each job its normal run dir and ``.hydra/`` files
through Hydra's ``run_job``. Jobs whose configs are equal up to the seed and the optimizer's
per-member hyperparameters (memexp.batched.optim.HYPERPARAMETERS) and the logger form a group;
each group is cut into populations of at most ``hydra.launcher.members`` jobs, and each population
trains in this process (memexp.batched.population). A job alone in its group runs the ordinary
single-run path. Per member, everything memexp.train.run_job does before training happens as
there: the job key file, reuse of a finished job with the same key, adoption of an interrupted one.

Everything is checked before anything trains: a job that cannot be batched yet (another
optimizer, batch norm, data parallelism, ...) stops the sweep with one line naming the key,
exit status 2, and the fresh sweep dir is removed again.

Hydra only instantiates launchers defined under ``hydra_plugins``; the class Hydra sees is the
thin ``hydra_plugins.memexp_batched_launcher.batched_launcher.BatchedLauncher``, which delegates
here.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from memexp import checkpoint as ckpt
from memexp import rundir
from memexp.batched.optim import HYPERPARAMETERS
from memexp.batched.population import OPTIMIZER_STATE_KEY, Member, Population, refusal
from memexp.config import Resume
from memexp.errors import MemexpError, require
from memexp.job import finished_in_place, objective, open_loggers, reuse_earlier
from memexp.logging import MultiLogger, read_metrics
from memexp.signals import Interrupted
from memexp.train import RunConfig, check_config

# Keys that may differ between the members of a population (besides the optimizer's hyperparameters).
MEMBER_KEYS = ("seed", "logger")


def population_signature(cfg: DictConfig) -> str:
    """What members of one population share: the job's config without its batchable keys."""
    container = rundir.resolved_config(cfg, MEMBER_KEYS)
    optimizer = container.get("optimizer", {})
    for key in HYPERPARAMETERS.get(str(optimizer.get("name")), ()):
        optimizer.pop(key, None)
    return json.dumps(container, sort_keys=True, default=str)


def plan_populations(configs: Sequence[DictConfig], members: int) -> list[list[int]]:
    """Job indices grouped by signature (in sweep order), each group cut into chunks of ``members``."""
    groups: dict[str, list[int]] = {}
    for index, cfg in enumerate(configs):
        groups.setdefault(population_signature(cfg), []).append(index)
    return [group[i : i + members] for group in groups.values() for i in range(0, len(group), members)]


def check_launch(members: int, members_per_pass: int, checked: Sequence[RunConfig]) -> None:
    """What the launcher checks before it trains any job (``memexp plan`` too): its own settings and
    every job's config (already checked by memexp.train.check_config) against what batches."""
    require(members >= 1, "hydra.launcher.members", members, "an integer >= 1")
    require(
        members_per_pass >= 0,
        "hydra.launcher.members_per_pass",
        members_per_pass,
        "an integer >= 1, or 0 for all members in one pass",
    )
    for run_cfg in checked:
        problem = refusal(run_cfg)
        if problem is not None:
            raise problem


def remove_fresh_sweep_dir(sweep_dir: Path) -> None:
    """A sweep refused at start-up leaves nothing behind: its dir (holding only Hydra's
    multirun.yaml) and the parents that become empty, up to the working directory."""
    if not sweep_dir.is_dir() or not {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
        return
    shutil.rmtree(sweep_dir, ignore_errors=True)
    cwd, parent = Path.cwd().resolve(), sweep_dir.resolve().parent
    while parent != cwd and cwd in parent.parents and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def latest_checkpoint_is_single_run(run_dir: Path) -> bool:
    """An adopted checkpoint of a basic-launcher job: it resumes on the single-run path."""
    state = ckpt.CheckpointManager(run_dir / "checkpoints", 1).load_latest()
    return state is not None and OPTIMIZER_STATE_KEY not in state


def prepare_member(cfg: DictConfig, run_cfg: RunConfig) -> Member | float | None:
    """The task function Hydra's run_job calls for each member (``run_cfg``: its config, checked
    before the sweep started): memexp.job's steps before training (a job finished in place or earlier
    is not trained again; an interrupted one is adopted). Returns the Member to train, or the
    objective of a job already done."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    resume = run_cfg.trainer.resume is Resume.auto
    key = rundir.job_key(cfg)
    done = finished_in_place(run_dir, key, resume)
    if done is not None:
        return objective(done)
    rundir.write_job_key(run_dir, key)
    reused = reuse_earlier(cfg, run_dir, key, multirun=True, resume=resume)
    if reused is not None:
        return objective(reused)
    if latest_checkpoint_is_single_run(run_dir):
        from memexp.job import run_job as run_single

        return run_single(cfg)
    return Member(run_cfg=run_cfg, run_dir=run_dir, key=key, cfg=cfg)


def replay_to_wandb(member: Member, job_cfg: DictConfig) -> None:
    """A member's W&B run, written when the member ends: W&B keeps one run open per process, so
    the members' runs are written one after another from their metrics.jsonl and summary."""
    wandb = member.run_cfg.logger.wandb
    if wandb is None or wandb.mode == "disabled":
        return
    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(job_cfg)  # open_loggers names the W&B run from the job's Hydra config
    try:
        local, *remote = open_loggers(member.cfg, member.run_cfg, member.run_dir)
        local.close()
        logger = MultiLogger(remote)
        for event in read_metrics(member.run_dir / "metrics.jsonl"):
            step = event.pop("step")
            logger.log(event, step)
        logger.summary(member.summary)
        logger.close()
    finally:
        instance.cfg = saved


class PopulationLauncher:
    def __init__(self, members: int = 16, members_per_pass: int = 0) -> None:
        self.members, self.members_per_pass = members, members_per_pass
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _run_job(self, config: DictConfig, task_function: TaskFunction) -> JobReturn:
        assert self.hydra_context is not None and self.config is not None
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        configs = []
        for offset, overrides in enumerate(job_overrides):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = initial_job_idx + offset
            configs.append(config)
        try:
            checked = [check_config(config) for config in configs]
            check_launch(self.members, self.members_per_pass, checked)
        except MemexpError as error:
            remove_fresh_sweep_dir(sweep_dir)
            print(f"memexp: error: {error}", file=sys.stderr)
            sys.exit(2)
        populations = plan_populations(configs, self.members)
        print(
            f"memexp: {len(configs)} jobs in {len(populations)} populations of up to {self.members} "
            f"(hydra/launcher=batched)"
        )
        returns: list[JobReturn | None] = [None] * len(configs)
        for population in populations:
            for index in population:
                overrides = " ".join(filter_overrides(job_overrides[index]))
                print(f"memexp: job #{initial_job_idx + index}: {overrides}")
            if len(population) == 1:
                returns[population[0]] = self._run_job(configs[population[0]], self.task_function)
            else:
                self.launch_population(configs, checked, population, returns)
        assert all(ret is not None for ret in returns)
        return returns  # type: ignore[return-value]

    def launch_population(
        self,
        configs: Sequence[DictConfig],
        checked: Sequence[RunConfig],
        population: list[int],
        returns: list[JobReturn | None],
    ) -> None:
        members: list[tuple[int, Member]] = []
        for index in population:
            ret = self._run_job(configs[index], partial(prepare_member, run_cfg=checked[index]))
            returns[index] = ret
            if ret.status is JobStatus.COMPLETED and isinstance(ret.return_value, Member):
                members.append((index, ret.return_value))
                ret.return_value = None  # set to the job's objective once it has trained
        if not members:
            return
        try:
            summaries = Population([member for _, member in members], self.members_per_pass).train()
        except Interrupted as stopped:
            print(
                f"memexp: {stopped}; checkpoints saved in each member's run dir; run the same command with "
                f"hydra.sweep.dir={self.config.hydra.sweep.dir if self.config else '?'} to resume",
                file=sys.stderr,
            )
            sys.exit(128 + stopped.signum)
        except Exception as error:  # noqa: BLE001 - like run_job: a failed job, the sweep goes on
            for index, _ in members:
                ret = returns[index]
                assert ret is not None
                ret.status, ret.return_value = JobStatus.FAILED, error
            return
        for (index, member), summary in zip(members, summaries):
            ret = returns[index]
            assert ret is not None
            ret.return_value = objective(summary)
            replay_to_wandb(member, configs[index])
