"""Datasets, registered in :data:`DATASETS` under their config name."""

from memexp.data import digits, huggingface, images, text  # noqa: F401  (registers the builders)
from memexp.data.base import DATASETS, BatchIterator, DataBundle, DataConfig, DataSpec

__all__ = ["DATASETS", "BatchIterator", "DataBundle", "DataConfig", "DataSpec"]
