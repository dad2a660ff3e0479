"""Synthetic linear regression, seed 001's theory setting (Jiang, Malik & Li prove their R_med claim
for a two-layer linear network): Gaussian inputs x ~ N(0, I_dim), a fixed linear teacher W*
(out_dim, dim) with N(0, 1/dim) entries, targets y = W* x + noise * N(0, I), MSE loss.

Everything is drawn from ``seed``: the teacher, then the training, validation and test examples as
three separate draws, so the splits are disjoint and the validation and test sets are held out from
what is trained on. No files, no network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from memexp.data.base import DATASETS, BatchIterator, DataBundle, DataConfig, DataSpec, TensorBatchIterator
from memexp.errors import require


@dataclass
class SyntheticRegressionConfig(DataConfig):
    name: str = "synthetic_regression"
    n_train: int = 1024
    n_val: int = 256
    n_test: int = 1024
    dim: int = 32  # input dimension
    out_dim: int = 4  # target dimension
    noise: float = 0.1  # standard deviation of the label noise
    seed: int = 0  # teacher and examples; fixed across training seeds: every run sees the same data

    def check(self) -> None:
        for key in ("n_train", "n_val", "n_test", "dim", "out_dim"):
            require(getattr(self, key) > 0, key, getattr(self, key), "an integer > 0")
        require(self.noise >= 0.0, "noise", self.noise, "a number >= 0")


class SyntheticRegression(DataBundle):
    def __init__(self, spec: DataSpec, splits: dict[str, tuple[Tensor, Tensor]], teacher: Tensor) -> None:
        self.spec, self.splits, self.teacher = spec, splits, teacher

    def train_iterator(self, batch_size: int, seed: int) -> BatchIterator:
        return TensorBatchIterator(*self.splits["train"], batch_size=batch_size, seed=seed)

    def eval_sets(self, max_examples: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
        """``train``: the first n training examples (a fixed subset: the draws are i.i.d.) and
        ``test``: the first n test examples, n = the smaller of the two splits, so the gap compares
        equally sized sets; ``val``: the whole validation draw. ``max_examples > 0`` caps every set."""

        def cap(n: int) -> int:
            return min(n, max_examples) if max_examples > 0 else n

        n = cap(min(self.splits["train"][0].shape[0], self.splits["test"][0].shape[0]))
        sizes = {"train": n, "val": cap(self.splits["val"][0].shape[0]), "test": n}
        return {split: (x[: sizes[split]], y[: sizes[split]]) for split, (x, y) in self.splits.items()}


@DATASETS.register("synthetic_regression", config=SyntheticRegressionConfig)
def build_synthetic_regression(cfg: SyntheticRegressionConfig, device: torch.device) -> SyntheticRegression:
    generator = torch.Generator().manual_seed(cfg.seed)
    teacher = torch.randn(cfg.out_dim, cfg.dim, generator=generator) / cfg.dim**0.5
    splits = {}
    for split, count in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        x = torch.randn(count, cfg.dim, generator=generator)
        y = x @ teacher.T + cfg.noise * torch.randn(count, cfg.out_dim, generator=generator)
        splits[split] = (x.to(device), y.to(device))
    spec = DataSpec(name="synthetic_regression", task="regression", input_shape=(cfg.dim,), num_classes=cfg.out_dim)
    return SyntheticRegression(spec, splits, teacher.to(device))
