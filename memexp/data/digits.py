"""scikit-learn's handwritten digits: the offline default.

1,797 real 8x8 grey-scale images of the digits 0-9 (UCI ML hand-written digits, the test part),
shipped as a file inside every scikit-learn installation, so it needs no network, loads in
milliseconds and trains a model to a meaningful generalization gap in seconds on a CPU.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memexp.data.base import DATASETS, DataConfig, DataSpec, InMemoryClassification, carve, check_val_fraction
from memexp.errors import DataNotFoundError, require


@dataclass
class DigitsConfig(DataConfig):
    name: str = "digits"
    test_fraction: float = 0.25  # the held-out test split, carved out first
    val_fraction: float = 0.15  # the validation split, carved out of what remains for training
    split_seed: int = 0  # fixed across training seeds: every run sees the same splits

    def check(self) -> None:
        require(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "a number in (0, 1)")
        check_val_fraction(self.val_fraction)


def digits_file() -> Path:
    """The CSV that scikit-learn's ``load_digits`` reads, found without importing scikit-learn
    (importing it costs seconds; reading the file costs milliseconds)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError("data=digits needs scikit-learn, which ships the digits file: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataNotFoundError(f"data=digits: {path} is missing; reinstall scikit-learn (pip install -U scikit-learn)")
    return path


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (1797, 64) in 0..16, labels (1797,)), exactly what sklearn.datasets.load_digits returns."""
    table = np.loadtxt(digits_file(), delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


@DATASETS.register("digits", config=DigitsConfig)
def build_digits(cfg: DigitsConfig, device: torch.device) -> InMemoryClassification:
    pixels, targets = load_digits_arrays()
    images = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(targets, dtype=torch.long)
    (images, labels), test = carve((images, labels), cfg.test_fraction, cfg.split_seed, "data.test_fraction")
    train, val = carve((images, labels), cfg.val_fraction, cfg.split_seed, "data.val_fraction")
    # Normalise with the training data's statistics only (the validation and test splits unseen).
    mean, std = train[0].mean(), train[0].std()

    def prepare(split: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return ((split[0] - mean) / std).to(device), split[1].to(device)

    spec = DataSpec(name="digits", task="classification", input_shape=(1, 8, 8), num_classes=10)
    return InMemoryClassification(
        spec, train=prepare(train), val=prepare(val), test=prepare(test), eval_seed=cfg.split_seed
    )
