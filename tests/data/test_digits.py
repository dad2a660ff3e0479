"""The offline default data and the on-device batch iterator."""

from __future__ import annotations

import numpy as np
import torch

from memexp.data.base import TensorBatchIterator, carve, split_indices
from memexp.data.digits import DigitsConfig, build_digits, load_digits_arrays


def test_digits_file_equals_sklearn_load_digits() -> None:
    from sklearn.datasets import load_digits

    pixels, labels = load_digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(pixels, reference.data)
    np.testing.assert_array_equal(labels, reference.target)


def test_split_is_deterministic_disjoint_and_complete() -> None:
    train, val = split_indices(1797, 0.25, seed=0)
    again_train, again_val = split_indices(1797, 0.25, seed=0)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 449 and len(train) == 1348
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1797))
    other_train, _ = split_indices(1797, 0.25, seed=1)
    assert not torch.equal(train, other_train)


def test_bundle_shapes_normalisation_and_equal_eval_sets() -> None:
    bundle = build_digits(DigitsConfig(), torch.device("cpu"))
    x_train, y_train = bundle.train
    # 1797 examples: test round(0.25 * 1797) = 449; validation round(0.15 * 1348) = 202; train 1146.
    assert x_train.shape == (1146, 1, 8, 8) and y_train.dtype == torch.long
    assert bundle.val[0].shape[0] == 202 and bundle.test[0].shape[0] == 449
    assert abs(x_train.mean().item()) < 1e-5 and abs(x_train.std().item() - 1) < 1e-4
    assert bundle.spec.num_classes == 10 and bundle.spec.task == "classification"
    sets = bundle.eval_sets()
    assert sets["train"][0].shape[0] == sets["test"][0].shape[0] == 449 and sets["val"][0].shape[0] == 202
    capped = bundle.eval_sets(max_examples=100)
    assert {split: x.shape[0] for split, (x, _) in capped.items()} == {"train": 100, "val": 100, "test": 100}
    again = bundle.eval_sets()
    assert torch.equal(again["train"][0], sets["train"][0]), "the train subset must be fixed"


def test_iterator_visits_every_example_once_per_epoch_and_resumes() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    iterator = TensorBatchIterator(x, torch.arange(10), batch_size=3, seed=7)
    assert iterator.steps_per_epoch == 3
    epoch = torch.cat([next(iterator)[1] for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # drop_last: 9 of 10 distinct examples
    state = iterator.state_dict()
    expected = [next(iterator)[1] for _ in range(5)]
    restored = TensorBatchIterator(x, torch.arange(10), batch_size=3, seed=999)
    restored.load_state_dict(state)
    assert all(torch.equal(a, next(restored)[1]) for a in expected)


def test_three_splits_are_disjoint_complete_and_fixed_by_split_seed() -> None:
    """Every example is in exactly one of train / validation / test, and the bundle's tensors are
    exactly those examples normalised with the training part's statistics."""
    pixels, labels = load_digits_arrays()
    raw = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    ids = torch.arange(len(labels))
    (rest,), (test_ids,) = carve((ids,), 0.25, 0, "data.test_fraction")
    (train_ids,), (val_ids,) = carve((rest,), 0.15, 0, "data.val_fraction")
    assert sorted(torch.cat([train_ids, val_ids, test_ids]).tolist()) == list(range(1797))
    bundle = build_digits(DigitsConfig(), torch.device("cpu"))
    mean, std = raw[train_ids].mean(), raw[train_ids].std()
    for split, split_ids in (("train", train_ids), ("val", val_ids), ("test", test_ids)):
        x, y = getattr(bundle, split)
        torch.testing.assert_close(x, (raw[split_ids] - mean) / std)
        assert torch.equal(y, torch.tensor(labels)[split_ids])
    other = build_digits(DigitsConfig(split_seed=1), torch.device("cpu"))
    assert not torch.equal(other.test[1], bundle.test[1]) or not torch.equal(other.test[0], bundle.test[0])
