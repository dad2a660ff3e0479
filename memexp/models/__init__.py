"""Models, one per file, registered in :data:`MODELS` under their config name."""

from memexp.models import cnn, deep_linear, gpt, mlp, resnet, vit  # noqa: F401  (registers the builders)
from memexp.models.registry import MODELS, ModelConfig

__all__ = ["MODELS", "ModelConfig"]
