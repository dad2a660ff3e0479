"""scikit-learn's handwritten digits: the offline default.

1,797 real 8x8 grey-scale images of the digits 0-9 (UCI ML hand-written digits, the test part),
shipped as a file inside every scikit-learn installation, so it needs no network, loads in
milliseconds and trains a model to a meaningful generalization gap in seconds on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memexp.data.base import DATASETS, DataConfig, DataSpec, InMemoryClassification, split_indices
from memexp.errors import require


@dataclass
class DigitsConfig(DataConfig):
    name: str = "digits"
    val_fraction: float = 0.25
    split_seed: int = 0  # fixed across training seeds: every run sees the same split

    def check(self) -> None:
        require(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a number in (0, 1)")


@DATASETS.register("digits", config=DigitsConfig)
def build_digits(cfg: DigitsConfig, device: torch.device) -> InMemoryClassification:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_index, val_index = split_indices(len(labels), cfg.val_fraction, cfg.split_seed)
    # Normalise with the training split's statistics only.
    mean, std = images[train_index].mean(), images[train_index].std()
    images = ((images - mean) / std).to(device)
    labels = labels.to(device)
    train_index, val_index = train_index.to(device), val_index.to(device)
    spec = DataSpec(name="digits", task="classification", input_shape=(1, 8, 8), num_classes=10)
    return InMemoryClassification(
        spec,
        train=(images[train_index], labels[train_index]),
        val=(images[val_index], labels[val_index]),
        eval_seed=cfg.split_seed,
    )
