"""What a model is trained to do: the loss, the evaluation metrics and the generalization gap.

The task comes with the data (``DataSpec.task``). The loop and the gap work the same for every task:
``gap/<metric> = test/<metric> - train/<metric>``, both measured by :func:`evaluate` in eval mode on
equally sized sets (``val/*``, the validation split, is measured the same way but is not part of the gap).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Evaluation holds one batch of logits at a time; keep it under this many elements (512 MiB in fp32).
MAX_EVAL_LOGITS = 2**27


class Task:
    name: str

    def eval_batch_size(self, requested: int, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The evaluation batch size, capped so one batch of logits stays under MAX_EVAL_LOGITS."""
        per_example = math.prod(input_shape[:1]) * num_classes if self.name == "lm" else num_classes
        return max(1, min(requested, MAX_EVAL_LOGITS // max(1, per_example)))

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        """Number of correct predictions in the batch and the number of predictions."""
        raise NotImplementedError

    def summarize(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"loss": loss, "acc": accuracy}

    def gap(self, train: dict[str, float], test: dict[str, float]) -> dict[str, float]:
        return {"loss": test["loss"] - train["loss"], "acc": test["acc"] - train["acc"]}


class Classification(Task):
    name = "classification"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target)

    def correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        return (output.argmax(dim=-1) == target).sum(), target.numel()


class LanguageModelling(Task):
    """Next-token prediction: output (batch, time, vocab), target (batch, time)."""

    name = "lm"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float().flatten(0, -2), target.flatten())

    def correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        return (output.argmax(dim=-1) == target).sum(), target.numel()

    def summarize(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"loss": loss, "acc": accuracy, "ppl": math.exp(min(loss, 50.0))}

    def gap(self, train: dict[str, float], test: dict[str, float]) -> dict[str, float]:
        # The perplexity gap is a ratio: exp(test_loss - train_loss).
        return {**super().gap(train, test), "ppl_ratio": test["ppl"] / train["ppl"]}


class Regression(Task):
    """Real-valued targets under the mean squared error, output and target (batch, out_dim): loss
    only (there is nothing to be correct about), so no accuracy columns and ``gap/loss`` alone."""

    name = "regression"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output.float(), target.float())

    def correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        # No accuracy; the count weights each batch's mean loss (the MSE averages over all entries).
        return torch.zeros((), device=output.device), target.numel()

    def summarize(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"loss": loss}

    def gap(self, train: dict[str, float], test: dict[str, float]) -> dict[str, float]:
        return {"loss": test["loss"] - train["loss"]}


TASKS: dict[str, Callable[[], Task]] = {
    "classification": Classification,
    "lm": LanguageModelling,
    "regression": Regression,
}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy over ``(x, y)`` in eval mode; restores the model's previous mode.
    ``reduce`` (e.g. an all-reduce over data-parallel ranks, each holding a shard) combines the
    sums before the means are taken."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    count = torch.zeros((), dtype=torch.float64, device=x.device)
    try:
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            with autocast():
                output = model(xb)
            correct, n = task.correct(output, yb)
            loss_sum += task.loss(output, yb).double() * n
            correct_sum += correct
            count += n
    finally:
        model.train(was_training)
    totals = torch.stack([loss_sum, correct_sum, count])
    if reduce is not None:
        totals = reduce(totals)
    loss_total, correct_total, n_total = totals.tolist()
    return task.summarize(loss_total / n_total, correct_total / n_total)
