"""`memexp train`: the Hydra app around one training job (memexp.train holds the loop).

    parse and check the config -> lock the run dir -> already finished? say so, change nothing
    -> build the run -> reuse or resume an earlier copy of a sweep job -> train here, or relaunch
    on N data-parallel ranks -> after a sweep, report every job's real status.

A bad value stops before anything is written (Hydra's fresh run dir is removed again).

How `main()` knows the sweep it reports on, without state carried out of Hydra: for ``-m`` it
composes the sweep-level config first (as ``memexp plan`` does), pins the resolved
``hydra.sweep.dir`` on the command line it hands to Hydra (so ``${now:...}`` resolves once), and
counts the jobs with the same expansion (memexp.rundir); after Hydra returns it reads that dir.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from memexp import distributed, rundir, sweep
from memexp.config import Progress, Resume, register_configs
from memexp.errors import MemexpError
from memexp.logging import LocalLogger, MetricLogger
from memexp.logging.progress import ProgressReporter, print_summary_table
from memexp.signals import Interrupted
from memexp.train import Run, RunConfig, build_run, check_config, config_dir, train


def remove_fresh_run_dir(run_dir: Path, job_name: str) -> None:
    """Hydra creates the run dir (with .hydra/ and the job log) before the task runs. When the task
    stops on bad input, remove it again, but only if it holds nothing else (never a resumed run's),
    and the parents it leaves empty (a sweep dir holding only Hydra's multirun.yaml counts as
    empty), up to the working directory."""
    import shutil

    fresh = {".hydra", f"{job_name}.log", rundir.LOCK_FILE}
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= fresh:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd, parent = Path.cwd().resolve(), run_dir.resolve().parent
    while parent != cwd and cwd in parent.parents and parent.is_dir():
        if {p.name for p in parent.iterdir()} <= {"multirun.yaml"}:
            shutil.rmtree(parent, ignore_errors=True)
            parent = parent.parent
        else:
            break


def open_loggers(cfg: DictConfig, run_cfg: RunConfig, run_dir: Path) -> list[MetricLogger]:
    loggers: list[MetricLogger] = [LocalLogger(run_dir)]
    if run_cfg.logger.wandb is not None and run_cfg.logger.wandb.mode != "disabled":
        hydra_cfg = HydraConfig.get()
        overrides = hydra_cfg.job.override_dirname
        sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
        if sweep_dir is not None:
            name, group = overrides or run_dir.name, f"{cfg.task_name}-{sweep_dir.name}"
        else:
            name, group = (f"{run_dir.name}_{overrides}" if overrides else run_dir.name), None
        try:
            from memexp.logging.wandb_logger import open_wandb

            resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
            loggers.append(open_wandb(run_cfg.logger.wandb, run_dir, resolved, name, group, sweep_dir))  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - W&B trouble is a warning; the local log goes on
            print(f"memexp: warning: W&B is disabled for this run: {error}", file=sys.stderr)
    return loggers


def objective(summary: dict[str, Any] | None) -> float | None:
    """What the Hydra task returns (for sweepers that optimise): the final validation loss (never
    the test split's: selection must not see it)."""
    value = (summary or {}).get("val/loss")
    return value if isinstance(value, float) else None


def stop(error: BaseException, code: int, multirun: bool) -> NoReturn:
    """One line on stderr, then exit; in a sweep raise instead, so that the other jobs still run
    (Hydra's launcher records the failure and the end-of-sweep report shows it)."""
    print(f"memexp: error: {error}", file=sys.stderr)
    if multirun:
        raise error
    sys.exit(code)


def reject_input(error: MemexpError, run_dir: Path) -> NoReturn:
    """Bad input: one line naming the key, exit 2, and nothing left on disk."""
    remove_fresh_run_dir(run_dir, HydraConfig.get().job.name)
    print(f"memexp: error: {error}", file=sys.stderr)
    sys.exit(2)


def run_job(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        run_cfg = check_config(cfg)
    except MemexpError as error:
        reject_input(error, run_dir)
    if distributed.launched_by_torchrun():
        # One rank of a data-parallel job: the launching process holds the lock and reused any
        # earlier copy of the job; rank 0 logs and checkpoints.
        result = train_here(cfg, run_cfg, build_run(run_cfg), run_dir, multirun)
        # On success only: a rank that failed exits at once, and torchrun stops the others (a
        # barrier here would wait for ranks still blocked in a collective).
        distributed.shutdown()
        return result
    lock = rundir.RunDirLock(run_dir)
    try:
        lock.acquire()
    except rundir.RunDirInUse as error:
        stop(error, 1, multirun)
    try:
        return run_locked(cfg, run_cfg, run_dir, multirun)
    finally:
        lock.release()


def finished_in_place(run_dir: Path, key: str, resume: bool) -> dict[str, Any] | None:
    """The summary of this very job when it already finished in ``run_dir`` (nothing to do), else
    None (saying why an unreadable summary means running again)."""
    summary, problem = rundir.read_summary(run_dir)
    finished = summary is not None and summary.get("status") == rundir.Status.FINISHED
    # The same job only: a finished run continued with other settings (e.g. more steps) resumes.
    if resume and finished and rundir.read_job_key(run_dir) == key:
        print(f"memexp: job already finished in {run_dir}; nothing to do (trainer.resume=never would train it again)")
        return summary
    if problem:
        print(f"memexp: {run_dir}: {problem}; running the job again")
    return None


def reuse_earlier(cfg: DictConfig, run_dir: Path, key: str, multirun: bool, resume: bool) -> dict[str, Any] | None:
    """A sweep job new to ``run_dir``: the summary of an earlier finished job with the same key
    (reused, nothing to train), else None, having adopted an interrupted one's checkpoints if any."""
    if not (multirun and resume and not (run_dir / rundir.CHECKPOINT_DIR).is_dir()):
        return None
    overrides = list(HydraConfig.get().overrides.task)
    reused = sweep.reuse_earlier_job(Path(cfg.paths.output_root), key, run_dir, overrides)
    return rundir.read_summary(run_dir)[0] if reused == rundir.Status.FINISHED else None


def run_locked(cfg: DictConfig, run_cfg: RunConfig, run_dir: Path, multirun: bool) -> float | None:
    hydra_cfg = HydraConfig.get()
    resume = run_cfg.trainer.resume is Resume.auto
    key = rundir.job_key(cfg)
    done = finished_in_place(run_dir, key, resume)
    if done is not None:
        return objective(done)
    try:
        run = build_run(run_cfg)
    except MemexpError as error:
        reject_input(error, run_dir)
    rundir.write_job_key(run_dir, key)
    reused = reuse_earlier(cfg, run_dir, key, multirun, resume)
    if reused is not None:
        return objective(reused)
    if run_cfg.trainer.devices > 1:
        # Data parallel: this process only launches the ranks (they share this run dir).
        code = distributed.launch(run_cfg.trainer.devices, list(hydra_cfg.overrides.task), run_dir)
        if code != 0:
            raise RuntimeError(f"data-parallel training on {run_cfg.trainer.devices} processes exited with {code}")
        return objective(rundir.read_summary(run_dir)[0])
    return train_here(cfg, run_cfg, run, run_dir, multirun)


def train_here(cfg: DictConfig, run_cfg: RunConfig, run: Run, run_dir: Path, multirun: bool) -> float | None:
    if distributed.rank() != 0:
        train(run, run_dir, [], ProgressReporter(run.max_steps, Progress.off))
        return None
    try:
        summary = train(run, run_dir, open_loggers(cfg, run_cfg, run_dir))
    except Interrupted as stopped:
        print(
            f"memexp: {stopped}; checkpoint saved in {run_dir / rundir.CHECKPOINT_DIR}; run the same command "
            f"with hydra.run.dir={run_dir} to resume",
            file=sys.stderr,
        )
        sys.exit(128 + stopped.signum)
    except OSError as error:
        # The machine, not the code (a full disk, a lost mount): summary.json says failed, and the
        # same command resumes from the last checkpoint once the cause is gone.
        step = (rundir.read_summary(run_dir)[0] or {}).get("step", "?")
        stop(OSError(f"the run failed at step {step} ({error}); the same command resumes it"), 1, multirun)
    if run_cfg.trainer.progress.value != "off":
        print_summary_table(summary)
    return objective(summary)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_app(cfg: DictConfig) -> float | None:
    return run_job(cfg)


def quote_override_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pin_sweep(argv: list[str]) -> tuple[list[str], Path, int | None] | None:
    """For ``train -m``: the command line with its sweep dir pinned, the sweep dir, and the number
    of jobs (None when the sweeper decides it while running). None when no sweep will run, or when
    the sweep cannot be composed here (then Hydra reports the problem)."""
    from memexp import hydra_compat

    try:
        args = hydra_compat.parse_command_line(argv)
    except SystemExit:
        return None
    asks_for_info = args.cfg or args.info or args.shell_completion or args.help or args.hydra_help
    if not args.multirun or asks_for_info or args.config_path or args.config_dir or args.experimental_rerun:
        return None
    try:
        composer = hydra_compat.SweepComposer(config_dir(), args.config_name or "train", task_name="train")
        sweep_cfg = composer.sweep_config(list(args.overrides))
        sweep_dir = Path(str(sweep_cfg.hydra.sweep.dir))
    except Exception:  # noqa: BLE001 - Hydra itself reports a composition error, in its own words
        return None
    jobs = rundir.expand_sweep(sweep_cfg.hydra)
    if not any(arg.startswith("hydra.sweep.dir=") for arg in args.overrides):
        argv = [*argv, f"hydra.sweep.dir={quote_override_value(str(sweep_dir))}"]
    return argv, sweep_dir, (len(jobs) if jobs is not None else None)


def main() -> int:
    """`memexp train`: run the Hydra app; after a sweep, report every job's real status and exit
    non-zero if any job failed or never finished (whatever the launcher reported)."""
    register_configs()
    pinned = pin_sweep(sys.argv[1:])
    if pinned is not None:
        sys.argv = [sys.argv[0], *pinned[0]]
    code = 0
    try:
        hydra_app()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    if pinned is not None:
        _, sweep_dir, expected = pinned
        if sweep.report_sweep(sweep_dir, expected) and code == 0:
            code = 1
    return code
