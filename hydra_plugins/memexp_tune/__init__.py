"""Hydra plugin: the `memexp tune` sweeper (``hydra/sweeper=tune``).

Hydra only instantiates plugins from the ``hydra_plugins`` namespace package; the logic lives in
:mod:`memexp.tune`, this class only connects it to Hydra's sweeper interface and launcher.
"""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class TuneSweeper(Sweeper):
    def __init__(self, params: dict[str, str] | None = None) -> None:
        super().__init__()
        # A preset's `hydra.sweeper.params` (written for the basic sweeper) defines arms here too.
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from pathlib import Path

        from memexp.tune import run_study, sweep_arguments

        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        launcher_target = str(self.config.hydra.launcher.get("_target_", ""))
        return run_study(
            self.config,
            sweep_arguments(self.params, arguments),
            lambda batch, first: list(self.launcher.launch(batch, initial_job_idx=first)),
            is_serial=launcher_target.endswith("BasicLauncher"),
            validate=self.validate_batch_is_legal,
        )
