"""Name -> builder registries.

Optimizers, models, datasets and tasks are looked up by the ``name`` field of their config group,
so a new entry is one decorated function in its own file and the training loop never changes.
Registering with ``config=SomeDataclass`` also stores that dataclass in Hydra's ConfigStore as
``<group>/<name>_schema``; the YAML file ``conf/<group>/<name>.yaml`` lists it first in its defaults,
which makes every value typed (a wrong type fails when Hydra composes the config).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from memexp.errors import ConfigValueError

BuilderT = TypeVar("BuilderT", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[BuilderT]):
    name: str
    builder: BuilderT
    config: type | None
    info: Any = None  # what the entry says about itself (optimizers: an OptimizerInfo)


class Registry(Generic[BuilderT]):
    def __init__(self, group: str) -> None:
        self.group = group
        self._entries: dict[str, Entry[BuilderT]] = {}

    def register(self, name: str, *, config: type | None = None, info: Any = None) -> Callable[[BuilderT], BuilderT]:
        def decorate(builder: BuilderT) -> BuilderT:
            if name in self._entries:
                raise ValueError(f"{self.group} {name!r} is registered twice")
            self._entries[name] = Entry(name, builder, config, info)
            if config is not None:
                from hydra.core.config_store import ConfigStore

                ConfigStore.instance().store(group=f"schema/{self.group}", name=name, node=config)
            return builder

        return decorate

    def get(self, name: str) -> Entry[BuilderT]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigValueError(f"{self.group}.name", name, f"one of {self.names()}") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name).builder(*args, **kwargs)

    def entries(self) -> list[Entry[BuilderT]]:
        return [self._entries[name] for name in self.names()]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
