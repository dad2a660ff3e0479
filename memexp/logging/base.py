"""One logger interface, several backends at once."""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
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


def json_ready(value: Any) -> Any:
    """Floats that JSON can hold: NaN and infinities become strings ("nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same directory, then rename it over ``path``."""
    write_text_atomic(path, json.dumps(json_ready(data), indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file in the same directory, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
