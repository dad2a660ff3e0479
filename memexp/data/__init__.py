"""Datasets, registered in :data:`DATASETS` under their config name."""

# Importing a module registers its builders.
from memexp.data import digits, huggingface, images, synthetic_regression, text  # noqa: F401
from memexp.data.base import DATASETS, BatchIterator, DataBundle, DataConfig, DataSpec

__all__ = ["DATASETS", "BatchIterator", "DataBundle", "DataConfig", "DataSpec"]
