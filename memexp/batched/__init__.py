"""Populations: many jobs of a sweep trained together in one process (``hydra/launcher=batched``)."""
