"""memexp.data.base.MemberBatches: M iterators' next batches at once are each iterator's own."""

from __future__ import annotations

import torch

from memexp.data.base import MemberBatches, TensorBatchIterator


def iterators(x: torch.Tensor, y: torch.Tensor, seeds: range, augment=None) -> list[TensorBatchIterator]:
    return [TensorBatchIterator(x, y, batch_size=3, seed=seed, augment=augment) for seed in seeds]


def test_stacked_batches_are_each_iterators_own_across_epochs_and_a_restore() -> None:
    x, y = torch.randn(10, 2), torch.arange(10)
    together, alone = iterators(x, y, range(4)), iterators(x, y, range(4))
    batches = MemberBatches(together)
    assert batches.gathered is not None  # the one-gather path
    for step in range(12):  # 3 batches an epoch: four epochs, each member its own permutations
        if step == 7:  # member 2 restored to another permutation at the same position: stacked again
            other = TensorBatchIterator(x, y, batch_size=3, seed=99)
            for _ in range(7):
                next(other)
            together[2].load_state_dict(other.state_dict())
            alone[2].load_state_dict(other.state_dict())
            assert not torch.equal(together[2].order, together[3].order)
        xs, ys = next(batches)
        for member, it in enumerate(alone):
            bx, by = next(it)
            assert torch.equal(xs[member], bx) and torch.equal(ys[member], by), (step, member)
    assert [it.epoch for it in together] == [it.epoch for it in alone] == [3] * 4
    assert not torch.equal(together[0].order, together[1].order)


def test_members_out_of_step_or_augmented_are_drawn_one_by_one() -> None:
    x, y = torch.randn(10, 2), torch.arange(10)
    together, alone = iterators(x, y, range(3)), iterators(x, y, range(3))
    next(together[1]), next(alone[1])  # member 1 a batch ahead
    batches = MemberBatches(together)
    for _ in range(5):
        xs, _ = next(batches)
        for member, it in enumerate(alone):
            assert torch.equal(xs[member], next(it)[0])

    def flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return batch * (torch.rand((), generator=generator) * 2 - 1)

    augmented, reference = iterators(x, y, range(2), flip), iterators(x, y, range(2), flip)
    batches = MemberBatches(augmented)
    assert batches.gathered is None
    xs, _ = next(batches)
    assert all(torch.equal(xs[m], next(it)[0]) for m, it in enumerate(reference))
