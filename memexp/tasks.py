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

    def member_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """``loss`` of each of M models at once (the batched launcher's members), ``[M]``, from their
        stacked outputs and targets (``[M, batch, ...]`` each; a shared target expanded to M). This
        default loops over the models; tasks override it with one pass."""
        return torch.stack([self.loss(out, t) for out, t in zip(output, target)])

    def member_loss_and_gradient(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`member_loss` ``[M]`` and the gradient of their sum with respect to ``output`` (a
        population whose backward is written out: memexp.models.population.linear_chain_gradients).
        This default asks autograd; tasks override it with the closed form."""
        with torch.enable_grad():
            leaf = output.detach().requires_grad_(True)
            losses = self.member_loss(leaf, target)
            (grad,) = torch.autograd.grad(losses.sum(), leaf)
        return losses.detach(), grad

    def member_correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        """``correct`` of each of M models at once, stacked as in :meth:`member_loss`: the counts
        ``[M]`` and the number of predictions per model."""
        counts = [self.correct(out, t) for out, t in zip(output, target)]
        return torch.stack([torch.as_tensor(c, device=output.device) for c, _ in counts]), counts[0][1]

    def summarize(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"loss": loss, "acc": accuracy}

    def gap(self, train: dict[str, float], test: dict[str, float]) -> dict[str, float]:
        return {"loss": test["loss"] - train["loss"], "acc": test["acc"] - train["acc"]}


# torch's CPU log-softmax over a last dim shorter than one vector register (16 fp32 lanes) takes a
# scalar path, 5-9x slower than with the classes moved to dim 1, where it vectorizes over the
# positions (measured on 16x64 logits: 10 classes 141 vs 25 us, 15 classes 209 vs 29 us; from 16
# classes on the last dim is the faster layout).
SHORT_CLASS_DIM = 16


def member_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Task.member_loss of the cross-entropy tasks, output ``[M, ..., classes]``: each model's mean
    cross-entropy over its predictions."""
    if output.shape[-1] < SHORT_CLASS_DIM:
        losses = F.cross_entropy(output.float().movedim(-1, 1), target, reduction="none")
    else:
        losses = F.cross_entropy(output.float().flatten(0, -2), target.flatten(), reduction="none")
    return losses.view(output.shape[0], -1).mean(dim=1)


def member_cross_entropy_and_gradient(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`member_cross_entropy` and the gradient of its sum over the members with respect to
    ``output``: (softmax − one-hot) / predictions per member, the classes on dim 1 when they are
    few (as there)."""
    short = output.shape[-1] < SHORT_CLASS_DIM
    dim = 1 if short else -1
    log_probabilities = torch.log_softmax(output.float().movedim(-1, 1) if short else output.float(), dim)
    index = target.unsqueeze(dim)
    picked = log_probabilities.gather(dim, index).squeeze(dim)  # log p(target) of every prediction
    losses = picked.flatten(1).mean(dim=1).neg()
    grad = log_probabilities.exp_()
    grad.scatter_(dim, index, -1.0, reduce="add")
    grad.div_(picked[0].numel())
    return losses, (grad.movedim(1, -1) if short else grad).to(output.dtype)


def member_argmax_correct(output: Tensor, target: Tensor) -> tuple[Tensor, int]:
    """Task.member_correct of the cross-entropy tasks: the top class is the prediction, the first
    one on ties (as argmax). Over a short class dim, ``max(dim=1)`` of the classes on dim 1:
    torch's CPU argmax there takes 1.3 ms on 16×449×10 logits, ``max`` 0.08 ms."""
    short = output.shape[-1] < SHORT_CLASS_DIM
    predicted = output.movedim(-1, 1).max(dim=1).indices if short else output.argmax(dim=-1)
    return (predicted == target).flatten(1).sum(dim=1), target[0].numel()


class Classification(Task):
    name = "classification"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target)

    def correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        return (output.argmax(dim=-1) == target).sum(), target.numel()

    def member_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return member_cross_entropy(output, target)

    def member_loss_and_gradient(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return member_cross_entropy_and_gradient(output, target)

    def member_correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        return member_argmax_correct(output, target)


class LanguageModelling(Task):
    """Next-token prediction: output (batch, time, vocab), target (batch, time)."""

    name = "lm"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float().flatten(0, -2), target.flatten())

    def correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        return (output.argmax(dim=-1) == target).sum(), target.numel()

    def member_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return member_cross_entropy(output, target)

    def member_loss_and_gradient(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return member_cross_entropy_and_gradient(output, target)

    def member_correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        return member_argmax_correct(output, target)

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

    def member_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return (output.float() - target.float()).square().flatten(1).mean(dim=1)

    def member_loss_and_gradient(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        error = output.float() - target.float()
        losses = error.square().flatten(1).mean(dim=1)
        return losses, error.mul_(2.0 / error[0].numel()).to(output.dtype)

    def member_correct(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        return torch.zeros(output.shape[0], device=output.device), target[0].numel()

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
    try:
        (result,) = evaluate_members(lambda xb: model(xb).unsqueeze(0), 1, task, x, y, batch_size, autocast, reduce)
    finally:
        model.train(was_training)
    return result


@torch.no_grad()
def evaluate_members(
    outputs: Callable[[Tensor], Tensor],
    members: int,
    task: Task,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> list[dict[str, float]]:
    """:func:`evaluate` for ``members`` models at once, the caller having put them in eval mode:
    ``outputs(xb)`` returns their outputs stacked, ``[members, batch, ...]`` (the batched launcher's
    population; a single model is ``members = 1``). Each model's loss and accuracy are accumulated
    batch by batch in float64, by the task's ``member_loss`` and ``member_correct``."""
    totals = torch.zeros(members, 3, dtype=torch.float64, device=x.device)  # loss sum, correct, count
    loss_sums, correct_sums, count = totals[:, 0], totals[:, 1], 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with autocast():
            output = outputs(xb)
        targets = yb.expand(members, *yb.shape)
        losses, (correct, n) = task.member_loss(output, targets), task.member_correct(output, targets)
        loss_sums.add_(losses, alpha=n)  # in float64, each batch's mean weighted by its predictions
        correct_sums.add_(correct)
        count += n
    totals[:, 2] = count
    if reduce is not None:
        totals = reduce(totals)
    return [task.summarize(loss / n, correct / n) for loss, correct, n in totals.tolist()]
