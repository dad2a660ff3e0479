"""One logger interface, several backends at once."""

from __future__ import annotations

import warnings
from typing import Any, Protocol


class MetricLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def summary(self, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MultiLogger:
    """Fans every call out to all backends. A backend that fails is warned about and dropped, so a
    W&B outage never stops the run (the local log keeps everything)."""

    def __init__(self, backends: list[MetricLogger]) -> None:
        self.backends = list(backends)

    def _call(self, method: str, *args: Any) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as error:  # noqa: BLE001 - a logging backend must never crash the run
                if getattr(backend, "essential", False):
                    raise
                warnings.warn(f"{type(backend).__name__}.{method} failed and is disabled: {error}", stacklevel=2)
                self.backends.remove(backend)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._call("log", metrics, step)

    def rewind(self, step: int) -> None:
        """Forget events logged after ``step`` (a resumed run repeats them), where a backend can."""
        for backend in self.backends:
            if hasattr(backend, "rewind"):
                backend.rewind(step)

    def summary(self, summary: dict[str, Any]) -> None:
        self._call("summary", summary)

    def close(self) -> None:
        self._call("close")
