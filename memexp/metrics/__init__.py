"""Implicit-regularization and local-geometry metrics (``geom/*``), pure functions of the model, the
loss function, a fixed probe batch and the optimizer. Definitions: shared/spec/algorithms.md
("Metrics") and memoryless.md; :mod:`memexp.metrics.probe` puts them together."""

from memexp.metrics.probe import GeometryProbe, MetricsSchedule, ProbeState, compute_metrics

__all__ = ["GeometryProbe", "MetricsSchedule", "ProbeState", "compute_metrics"]
