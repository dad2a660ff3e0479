"""What every dataset hands to the training loop.

A dataset builder (registered in :data:`DATASETS`) takes its config dataclass and the training
device and returns a :class:`DataBundle`: a :class:`DataSpec` that the model builder reads (input
shape, number of classes or vocabulary size, task), an endless training batch iterator with a
resumable state, and three evaluation sets (:data:`SPLITS`):

- ``train``: a fixed subset of the data that is trained on, of the same size as ``test``, so the
  generalization gap ``gap/* = test/* - train/*`` compares like with like;
- ``val``: the validation split, carved out of the training data (``data.val_fraction``, fixed by
  ``data.split_seed``) and never trained on; hyperparameter selection (``memexp tune``) reads only it;
- ``test``: the held-out split (a dataset's official test split, or a fixed part carved out before
  anything else); the reported held-out figures and the gap use it, never the split selection saw.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from memexp.errors import ConfigValueError, require
from memexp.registry import Registry


@dataclass
class DataConfig:
    name: str = "?"

    def check(self) -> None:
        pass


def check_val_fraction(val_fraction: float) -> None:
    """Every dataset carves its validation split out of the training data: it must exist."""
    require(0.0 < val_fraction < 1.0, "val_fraction", val_fraction, "a number in (0, 1) (the validation part)")


@dataclass(frozen=True)
class DataSpec:
    name: str
    task: str  # "classification", "lm" or "regression" (a key of memexp.tasks.TASKS)
    input_shape: tuple[int, ...]  # one example, e.g. (1, 8, 8) for images or (block_size,) for text
    num_classes: int  # classes, the vocabulary size (lm) or the target dimension (regression)


class BatchIterator(ABC):
    """Endless iterator over training batches whose position can be saved and restored."""

    steps_per_epoch: int

    @abstractmethod
    def __next__(self) -> tuple[Tensor, Tensor]: ...

    def __iter__(self) -> BatchIterator:
        return self

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DataBundle(ABC):
    spec: DataSpec

    @abstractmethod
    def train_iterator(self, batch_size: int, seed: int) -> BatchIterator: ...

    @abstractmethod
    def eval_sets(self, max_examples: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"train": (x, y), "val": (x, y), "test": (x, y)}`` (see the module docstring); ``train``
        and ``test`` hold the same number of examples. ``max_examples > 0`` caps every set."""


Augment = Callable[[Tensor, torch.Generator], Tensor]


class MemberBatches:
    """The next batch of each of M iterators at once, stacked (``[M, batch, ...]``), each iterator
    advancing as on its own: the batched launcher's members.

    Un-augmented tensor iterators over the same tensors with one batch size (a population's members,
    which advance together) gather every batch in one ``index_select`` per tensor, from their
    permutations stacked once an epoch; otherwise each iterator's ``next()`` is stacked."""

    def __init__(self, iterators: list[BatchIterator]) -> None:
        self.iterators = iterators
        first = iterators[0]
        self.gathered: list[TensorBatchIterator] | None = None
        if all(
            isinstance(it, TensorBatchIterator)
            and it.augment is None
            and it.x is first.x  # type: ignore[attr-defined]
            and it.y is first.y  # type: ignore[attr-defined]
            and it.batch_size == first.batch_size  # type: ignore[attr-defined]
            for it in iterators
        ):
            self.gathered = iterators  # type: ignore[assignment]
        self._orders: tuple[list[Tensor], Tensor] | None = None  # the permutations, and stacked

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.gathered is None:
            batches = [next(it) for it in self.iterators]
            return torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
        members, first = self.gathered, self.gathered[0]
        if any(it.position != first.position for it in members):
            index = torch.cat([it.next_index() for it in members])
        else:  # in step (always, in a population): one slice of the stacked permutations
            for it in members:
                it.reshuffle_if_due()
            start = first.position
            index = self.stacked_orders()[:, start : start + first.batch_size].reshape(-1)
            for it in members:
                it.position += it.batch_size
        x, y = first.x.index_select(0, index), first.y.index_select(0, index)
        return x.view(len(members), -1, *x.shape[1:]), y.view(len(members), -1, *y.shape[1:])

    def stacked_orders(self) -> Tensor:
        """Every iterator's permutation, ``[M, n]``: stacked again only when one has changed (a new
        epoch, a restored state)."""
        orders = [it.order for it in self.gathered]  # type: ignore[union-attr]
        if self._orders is None or any(a is not b for a, b in zip(self._orders[0], orders)):
            self._orders = (orders, torch.stack(orders))
        return self._orders[1]


class TensorBatchIterator(BatchIterator):
    """Shuffled mini-batches drawn from tensors that already live on the training device.

    Small datasets stay on the device, so a step costs one index_select instead of a DataLoader
    round trip. Each epoch is a fresh permutation from a seeded generator; incomplete last batches
    are dropped so every step sees ``batch_size`` examples.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int, augment: Augment | None = None) -> None:
        n = x.shape[0]
        require(0 < batch_size <= n, "trainer.batch_size", batch_size, f"an integer in [1, {n}] (training set size)")
        self.x, self.y, self.batch_size, self.augment = x, y, batch_size, augment
        self.steps_per_epoch = n // batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.augment_generator = torch.Generator(device=x.device).manual_seed(seed + 1)
        self.epoch, self.position = 0, 0
        self.order = torch.randperm(n, generator=self.generator).to(x.device)

    def reshuffle_if_due(self) -> None:
        """At an epoch's end (no full batch left), a fresh permutation from the start."""
        if self.position + self.batch_size > self.x.shape[0]:
            self.order = torch.randperm(self.x.shape[0], generator=self.generator).to(self.x.device)
            self.epoch, self.position = self.epoch + 1, 0

    def next_index(self) -> Tensor:
        """The rows of the next batch (advances the position, reshuffling at an epoch's end)."""
        self.reshuffle_if_due()
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return index

    def __next__(self) -> tuple[Tensor, Tensor]:
        index = self.next_index()
        x = self.x.index_select(0, index)
        if self.augment is not None:
            x = self.augment(x, self.augment_generator)
        return x, self.y.index_select(0, index)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "order": self.order.cpu(),
            "generator": self.generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.order = state["order"].to(self.x.device)
        self.generator.set_state(state["generator"])
        self.augment_generator.set_state(state["augment_generator"])


def split_indices(n: int, fraction: float, seed: int, key: str = "data.val_fraction") -> tuple[Tensor, Tensor]:
    """A deterministic split of ``range(n)`` from ``seed``: (kept, carved out), the carved part being
    ``fraction`` of ``n``. ``key`` names the config key in the error when a part would be empty."""
    n_carved = round(n * fraction)
    if not 0 < n_carved < n:
        raise ConfigValueError(key, fraction, f"a fraction leaving both parts non-empty (n={n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_carved:].sort().values, order[:n_carved].sort().values


ArrayT = TypeVar("ArrayT", Tensor, np.ndarray)


def carve(
    arrays: tuple[ArrayT, ...], fraction: float, seed: int, key: str
) -> tuple[tuple[ArrayT, ...], tuple[ArrayT, ...]]:
    """Split parallel arrays (tensors or numpy arrays, first dimension = examples) into (kept, carved
    out) with :func:`split_indices`."""
    kept, carved = split_indices(len(arrays[0]), fraction, seed, key)

    def take(array: ArrayT, index: Tensor) -> ArrayT:
        return array[index.numpy()] if isinstance(array, np.ndarray) else array.index_select(0, index.to(array.device))

    return tuple(take(a, kept) for a in arrays), tuple(take(a, carved) for a in arrays)


class InMemoryClassification(DataBundle):
    """Image (or any tensor) classification data held as tensors on the training device: the
    training data (validation already removed), the validation split and the held-out test split."""

    def __init__(
        self,
        spec: DataSpec,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor],
        augment: Augment | None = None,
        eval_seed: int = 0,
    ) -> None:
        self.spec, self.train, self.val, self.test, self.augment = spec, train, val, test, augment
        self.eval_seed = eval_seed

    def train_iterator(self, batch_size: int, seed: int) -> BatchIterator:
        return TensorBatchIterator(*self.train, batch_size=batch_size, seed=seed, augment=self.augment)

    def eval_sets(self, max_examples: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
        def cap(n: int) -> int:
            return min(n, max_examples) if max_examples > 0 else n

        # train and test the same size (the gap compares like with like); val as large as it is.
        sizes = {"train": cap(min(self.test[0].shape[0], self.train[0].shape[0])), "val": cap(self.val[0].shape[0])}
        sizes["test"] = sizes["train"]
        # The same fixed subsets every time (and for every optimizer and seed): the split is part of
        # the data, not of the run.
        generator = torch.Generator().manual_seed(self.eval_seed)
        sets = {}
        for split, (x, y) in (("train", self.train), ("val", self.val), ("test", self.test)):
            index = torch.randperm(x.shape[0], generator=generator)[: sizes[split]].sort().values.to(x.device)
            sets[split] = (x.index_select(0, index), y.index_select(0, index))
        return sets


# A builder takes the dataset's config dataclass instance and the training device.
DataBuilder = Callable[[Any, torch.device], DataBundle]
DATASETS: Registry[DataBuilder] = Registry("data")
