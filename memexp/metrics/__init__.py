"""Implicit-regularization and local-geometry metrics: pure functions of model, loss and batch."""
