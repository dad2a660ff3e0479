"""Implicit-regularization and local-geometry metrics (``geom/*``), pure functions of the model, the
loss function, a fixed probe batch and the optimizer. Definitions: docs/metrics.md (and
docs/memory_theory.md for the correction term, docs/rmed.md for R_med); :mod:`memexp.metrics.probe`
puts them together."""

from memexp.metrics.probe import GeometryProbe, MetricsSchedule, ProbeState, compute_metrics

__all__ = ["GeometryProbe", "MetricsSchedule", "ProbeState", "compute_metrics"]
