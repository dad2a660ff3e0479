"""Hydra plugin: ``hydra/sweeper=memexp_basic``, the sweeper of ``memexp train -m`` (conf/train.yaml).

Hydra's basic sweeper with one duplicate removed. Before launching a batch it composes every job's
config, to fail early where a launcher composes jobs elsewhere (another process, a cluster node). The
batched launcher composes and checks every job of the batch itself before it trains any, in this
process, so there the sweeper's pass is the same work twice: about 0.07 s a job, more than a digits
MLP member's training. Under every other launcher this is Hydra's basic sweeper, unchanged.

It wraps a BasicSweeper instead of subclassing it: Hydra's plugin scan re-executes its own plugin
modules, rebinding the name ``BasicSweeper`` that BasicSweeper's ``__init__`` passes to ``super()``,
so a subclass made from the class imported before the scan cannot be instantiated after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class MemexpBasicSweeper(Sweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the class as it is now

        self.basic = BasicSweeper(max_batch_size=max_batch_size, params=params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.basic.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.leave_validation_to_the_launcher()

    def leave_validation_to_the_launcher(self) -> None:
        """A launcher declares ``composes_batch_first`` when its launch() composes every job of the
        batch before running any (memexp's batched launcher): its failures come as early as the
        sweeper's, so the sweeper does not compose the batch as well."""
        if getattr(self.basic.launcher, "composes_batch_first", False):
            self.basic.validate_batch_is_legal = self.skip_validation  # type: ignore[method-assign]

    def sweep(self, arguments: list[str]) -> Any:
        return self.basic.sweep(arguments)

    @staticmethod
    def skip_validation(batch: Sequence[Sequence[str]]) -> None:
        """The launcher composes and checks every job of ``batch`` before running any."""
