"""Weights & Biases backend: offline by default, one W&B run per memexp run.

The W&B run id is stored in the run directory (``wandb_id.txt``), so a resumed or requeued run
continues the same W&B run (``resume="allow"``) instead of starting a duplicate.

Online with no network (typical of cluster compute nodes): W&B is given ``logger.wandb.init_timeout``
seconds, then the run logs to an OFFLINE W&B run in the run dir instead (``wandb sync`` uploads it
later). In a sweep the first job that falls back writes ``wandb_mode.txt`` into the sweep dir, and the
following jobs go offline at once instead of waiting again.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from memexp import rundir
from memexp.config import WandbConfig


def run_id_for(run_dir: Path) -> str:
    """The W&B run id stored in ``run_dir``, created on first use."""
    path = run_dir / rundir.WANDB_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    rundir.write_text_atomic(path, run_id + "\n")
    return run_id


class WandbLogger:
    essential = False

    def __init__(
        self,
        cfg: WandbConfig,
        run_dir: Path,
        config: dict[str, Any],
        default_name: str,
        default_group: str | None,
        mode: str | None = None,
    ) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = wandb.init(
            dir=str(run_dir),
            id=run_id_for(run_dir),
            resume="allow",
            mode=mode or cfg.mode,
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.name or default_name,
            group=cfg.group or default_group,
            tags=list(cfg.tags),
            job_type=cfg.job_type,
            notes=cfg.notes,
            config=config,
            reinit="finish_previous",
            settings=wandb.Settings(
                console="off",
                x_disable_stats=True,
                disable_git=True,
                save_code=False,
                silent=True,
                init_timeout=cfg.init_timeout,
            ),
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, "step": step}, step=step)

    def summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)

    def close(self) -> None:
        self.run.finish()


def open_wandb(
    cfg: WandbConfig,
    run_dir: Path,
    config: dict[str, Any],
    default_name: str,
    default_group: str | None,
    sweep_dir: Path | None,
) -> WandbLogger:
    """A W&B logger; online that cannot reach W&B within ``cfg.init_timeout`` falls back to offline."""
    from wandb.errors import CommError

    decided = sweep_dir / rundir.WANDB_MODE_FILE if sweep_dir is not None else None
    if cfg.mode == "online" and decided is not None and decided.is_file():
        print(f"memexp: W&B offline for this job ({decided}: an earlier job of the sweep could not reach W&B)")
        return WandbLogger(cfg, run_dir, config, default_name, default_group, mode="offline")
    try:
        return WandbLogger(cfg, run_dir, config, default_name, default_group)
    except (CommError, TimeoutError) as error:  # TimeoutError: W&B's service did not answer even after its grace
        if cfg.mode != "online":
            raise
        reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        print(
            f"memexp: warning: W&B unreachable within {cfg.init_timeout:g} s ({reason}); logging to an offline "
            f"W&B run in {run_dir / 'wandb'} (`wandb sync` uploads it later)"
            + (", and so will the following jobs of this sweep" if decided is not None else ""),
            file=sys.stderr,
        )
        if decided is not None:
            rundir.write_text_atomic(decided, f"offline: {reason}\n")
        import wandb

        failed_id = run_id_for(run_dir)
        wandb.teardown()  # the failed online attempt still holds the run id in W&B's service process
        for attempt in (run_dir / "wandb").glob(f"run-*-{failed_id}"):
            shutil.rmtree(attempt, ignore_errors=True)  # so that `wandb sync` finds only the offline run
        # A fresh id as well: under load the service may not have let go of the failed attempt's id yet
        # ("run ID ... is in use"), and that run never reached the server, so nothing refers to it.
        (run_dir / rundir.WANDB_ID_FILE).unlink(missing_ok=True)
        return WandbLogger(cfg, run_dir, config, default_name, default_group, mode="offline")
