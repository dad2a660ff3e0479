"""Logging backends: the local files (always on) and W&B (optional)."""

from memexp.logging.base import MetricLogger, MultiLogger
from memexp.logging.local import LocalLogger, read_metrics

__all__ = ["LocalLogger", "MetricLogger", "MultiLogger", "read_metrics"]
