"""`memexp plan <overrides>`: what `memexp train -m <overrides>` would run, without running it.

The jobs come from memexp.rundir.compose_sweep, the same machinery Hydra uses for a sweep (its config
loader and the basic sweeper's expansion of ``a=1,2 b=x,y``), so each job's config is composed exactly
as for training and bad overrides fail the same way. For each job the plan prints its overrides, its job key and
what a re-run would do (run / reuse a finished job / resume an interrupted one). With a submitit
launcher (``hydra/launcher=slurm``) it also prints the sbatch script submitit would submit, built
by submitit itself from the launcher settings. With ``hydra/launcher=batched`` it checks every job as
that launcher does before training any (what it refuses fails the plan with the same line) and says
which population each job joins. Nothing is written.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import filter_overrides
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from memexp import rundir, sweep

if TYPE_CHECKING:
    from memexp.train import RunConfig


def submission_script(launcher: dict[str, Any], choice: str, num_jobs: int) -> str:
    """The script submitit would write, built by submitit itself from the launcher's settings."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cluster = "slurm" if "partition" in launcher else "local"
    params = dict(launcher)
    folder = params.pop("submitit_folder")
    init = {f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **init)
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in generic else f"{cluster}_{k}": v for k, v in params.items()})
    inner = executor._executor
    if cluster != "slurm":
        command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}"
        return f"# {num_jobs} local processes, each running:\n{command}"
    inner.parameters["map_count"] = num_jobs
    try:
        return inner._make_submission_file_text(inner._submitit_command_str, uid="plan")
    finally:
        inner.parameters.pop("map_count", None)


def batched_populations(cfg: DictConfig, configs: list[DictConfig], checked: list[RunConfig]) -> list[list[int]] | None:
    """Under ``hydra/launcher=batched``: the populations its launcher would form (job indices), after
    the checks it makes before training any job (raises its MemexpError); else None."""
    if cfg.hydra.runtime.choices.get("hydra/launcher") != "batched":
        return None
    from memexp.batched.launcher import check_launch, plan_populations

    members = int(cfg.hydra.launcher.members)
    check_launch(members, int(cfg.hydra.launcher.members_per_pass), checked)
    return plan_populations(configs, members)


def main() -> int:
    """`memexp plan <overrides>`."""
    from memexp.errors import MemexpError

    overrides = [a for a in sys.argv[1:] if a not in ("-m", "--multirun")]
    if any(a in ("-h", "--help") for a in overrides):
        print("usage: memexp plan [tune] <the overrides of memexp train -m (or memexp tune) ...>\n\n" + (__doc__ or ""))
        return 0
    plan_tune = bool(overrides) and overrides[0] == "tune"
    after: list[str] = []
    try:
        from memexp.train import check_config

        if plan_tune:
            from memexp.tune import plan_search

            planned, after = plan_search(overrides[1:])
        else:
            planned = rundir.compose_sweep(overrides)

        checked = [check_config(job.config) for job in planned.jobs]
        populations = batched_populations(planned.config, [job.config for job in planned.jobs], checked)
    except MemexpError as error:
        print(f"memexp: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - Hydra's composition errors: one clear message
        print(f"memexp: error: {error}", file=sys.stderr)
        return 1
    cfg, jobs = planned.config, planned.jobs
    choice = cfg.hydra.runtime.choices.get("hydra/launcher", "basic")
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    output_root = Path(str(cfg.paths.output_root)).resolve()
    what = "memexp tune: search" if plan_tune else "memexp plan"
    table = Table(title=f"{what}: {len(jobs)} jobs, launcher {choice}, sweep dir {sweep_dir}")
    columns = ["job", "overrides", "job key", "on this run"]
    population_of: dict[int, str] = {}
    if populations is not None:
        columns.insert(2, "population")
        for number, population in enumerate(populations):
            label = f"{number} ({len(population)} jobs)" if len(population) > 1 else f"{number} (alone: a single run)"
            population_of.update({index: label for index in population})
    for column in columns:
        table.add_column(column)
    for index, job in enumerate(jobs):
        key = rundir.job_key(job.config)
        previous, _ = sweep.find_previous(output_root, key)
        action = "train"
        if previous is not None:
            action = f"{'reuse' if previous.status == rundir.Status.FINISHED else 'resume'} {previous.run_dir}"
        cells = [str(index), " ".join(filter_overrides(job.overrides)), key, action]
        if populations is not None:
            cells.insert(2, population_of[index])
        table.add_row(*cells)
    Console(width=200).print(table)
    if populations is not None:
        print(
            f"{len(jobs)} jobs in {len(populations)} populations of up to {cfg.hydra.launcher.members} "
            "(hydra/launcher=batched)"
        )
    for line in after:
        print(line)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(launcher, dict)
    launcher.pop("_target_", None)
    if "submitit_folder" in launcher:
        print(f"\n# what submitit submits ({choice}):")
        print(submission_script(launcher, choice, len(jobs)))
    return 0
