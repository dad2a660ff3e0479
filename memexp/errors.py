"""Errors memexp reports to the user as one line instead of a traceback."""

from __future__ import annotations

from typing import Any


class MemexpError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits non-zero."""


class ConfigValueError(MemexpError):
    """A config value outside its allowed range, e.g. ``optimizer.lr=-1``."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

    def with_prefix(self, prefix: str) -> ConfigValueError:
        """The same error with the key qualified by its config group (``lr`` -> ``optimizer.lr``)."""
        return ConfigValueError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.allowed)


def require(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigValueError` naming ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigValueError(key, value, allowed)


class DataNotFoundError(MemexpError):
    """Data that is not on disk and cannot be downloaded; the message says where to get it."""
