"""The class Hydra instantiates for ``hydra/launcher=batched`` (conf/hydra/launcher/batched.yaml).

Hydra scans every module under ``hydra_plugins`` at start-up, so this one imports nothing heavy:
the launcher itself (memexp.batched.launcher, with torch) is imported only when a sweep uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hydra.plugins.launcher import Launcher

if TYPE_CHECKING:
    from hydra.core.utils import JobReturn
    from hydra.types import HydraContext, TaskFunction
    from omegaconf import DictConfig


class BatchedLauncher(Launcher):
    # launch() composes and checks every job of a batch before it trains any (memexp_basic sweeper).
    composes_batch_first = True

    def __init__(self, members: int = 16, members_per_pass: int = 0, **_: Any) -> None:
        from memexp.batched.launcher import PopulationLauncher

        self.launcher = PopulationLauncher(members, members_per_pass)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.launcher.launch(job_overrides, initial_job_idx)
