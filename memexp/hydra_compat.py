"""The few things memexp needs from Hydra that Hydra has no public API for, in one place.

Hydra (1.3) composes a sweep's config in MULTIRUN mode, expands ``a=1,2 b=x,y`` into jobs and parses
its own command line only inside ``hydra._internal``. memexp needs the same three things outside a
running app (``memexp plan``, the end-of-sweep report, the tune command), so they are wrapped here
and nowhere else: a Hydra upgrade that moves them breaks this file only.
"""

from __future__ import annotations

import argparse

from omegaconf import DictConfig


def expand_basic_sweep(overrides: list[str]) -> list[list[str]]:
    """The override list of every job Hydra's basic sweeper makes of ``overrides`` (the cartesian
    product of the discrete sweeps, in Hydra's order). Raises for a sweep it cannot expand (a range
    or interval needs another sweeper; a glob needs the config)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


class SweepComposer:
    """Composes configs the way ``@hydra.main`` does for ``-m``: the sweep-level config (what
    Hydra saves as ``multirun.yaml``), then each job's config from its overrides."""

    def __init__(self, config_dir: str, config_name: str, task_name: str) -> None:
        from hydra._internal.hydra import Hydra
        from hydra._internal.utils import create_config_search_path
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        self._hydra = Hydra.create_main_hydra2(
            task_name=task_name, config_search_path=create_config_search_path(config_dir)
        )
        GlobalHydra.instance().clear()  # the composer keeps its own loader; leave no global state behind
        self.config_name = config_name

    def sweep_config(self, overrides: list[str]) -> DictConfig:
        from hydra.types import RunMode

        return self._hydra.compose_config(
            self.config_name, overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )

    def job_config(self, sweep_config: DictConfig, job_overrides: list[str]) -> DictConfig:
        return self._hydra.config_loader.load_sweep_config(sweep_config, list(job_overrides))


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """Hydra's own reading of an app's command line (``overrides``, ``multirun``, ``cfg``,
    ``config_name``, ``config_dir``, ...), without running anything."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)
