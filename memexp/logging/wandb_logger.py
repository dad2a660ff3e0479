"""Weights & Biases backend: offline by default, one W&B run per memexp run.

The W&B run id is stored in the run directory (``wandb_id.txt``), so a resumed or requeued run
continues the same W&B run (``resume="allow"``) instead of starting a duplicate.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from memexp.config import WandbConfig

RUN_ID_FILE = "wandb_id.txt"


def run_id_for(run_dir: Path) -> str:
    """The W&B run id stored in ``run_dir``, created on first use."""
    path = run_dir / RUN_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id + "\n")
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
    ) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = wandb.init(
            dir=str(run_dir),
            id=run_id_for(run_dir),
            resume="allow",
            mode=cfg.mode,
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
                console="off", x_disable_stats=True, disable_git=True, save_code=False, silent=True
            ),
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, "step": step}, step=step)

    def summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)

    def close(self) -> None:
        self.run.finish()
