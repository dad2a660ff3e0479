"""Synthetic linear regression: deterministic from its seed, disjoint splits, the teacher's error is
the noise variance."""

from __future__ import annotations

import pytest
import torch

from memexp.data.synthetic_regression import SyntheticRegressionConfig, build_synthetic_regression
from memexp.errors import ConfigValueError

CPU = torch.device("cpu")


def bundle(**overrides: object):  # noqa: ANN201
    return build_synthetic_regression(SyntheticRegressionConfig(**overrides), CPU)  # type: ignore[arg-type]


def test_deterministic_from_the_seed() -> None:
    a, b, c = bundle(seed=3), bundle(seed=3), bundle(seed=4)
    for split in ("train", "val", "test"):
        assert torch.equal(a.splits[split][0], b.splits[split][0]) and torch.equal(
            a.splits[split][1], b.splits[split][1]
        )
        assert not torch.equal(a.splits[split][0], c.splits[split][0])
    assert torch.equal(a.teacher, b.teacher) and not torch.equal(a.teacher, c.teacher)


def test_shapes_spec_and_disjoint_splits() -> None:
    data = bundle(n_train=100, n_val=30, n_test=50, dim=5, out_dim=2)
    assert data.spec.task == "regression" and data.spec.input_shape == (5,) and data.spec.num_classes == 2
    assert [data.splits[s][0].shape for s in ("train", "val", "test")] == [(100, 5), (30, 5), (50, 5)]
    rows = {split: {tuple(row.tolist()) for row in data.splits[split][0]} for split in ("train", "val", "test")}
    assert rows["train"].isdisjoint(rows["val"]) and rows["train"].isdisjoint(rows["test"])
    assert rows["val"].isdisjoint(rows["test"])
    sets = data.eval_sets()
    assert list(sets) == ["train", "val", "test"]
    assert [sets[s][0].shape[0] for s in ("train", "val", "test")] == [50, 30, 50]  # train and test equal
    assert torch.equal(sets["train"][0], data.splits["train"][0][:50])  # a fixed subset of the training data
    assert all(x.shape[0] == 7 for x, _ in data.eval_sets(max_examples=7).values())


def test_targets_are_the_teacher_plus_noise_of_the_stated_size() -> None:
    data = bundle(n_train=20000, dim=8, out_dim=3, noise=0.5)
    x, y = data.splits["train"]
    residual = y - x @ data.teacher.T
    # The residual is the noise: variance 0.25 (20000 x 3 draws: standard error ~0.002) and uncorrelated with x.
    assert residual.var().item() == pytest.approx(0.25, abs=0.01)
    assert (x.T @ residual / x.shape[0]).abs().max().item() < 0.03
    assert torch.equal(bundle(noise=0.0).splits["test"][1], bundle(noise=0.0).splits["test"][0] @ bundle().teacher.T)


@pytest.mark.parametrize(("key", "value"), [("n_train", 0), ("dim", -1), ("noise", -0.1)])
def test_bad_config_names_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigValueError, match=key):
        SyntheticRegressionConfig(**{key: value}).check()  # type: ignore[arg-type]
