"""Tasks: losses, the gap, and evaluation batches that fit in memory."""

from __future__ import annotations

import math

import pytest
import torch

from memexp.tasks import MAX_EVAL_LOGITS, Classification, LanguageModelling, Regression, Task, evaluate


def test_lm_eval_batches_are_capped_by_logit_count() -> None:
    lm = LanguageModelling()
    # GPT-2 vocabulary, 1024-token blocks: 1024 blocks would be 5e10 logits; 2 fit under 2**27.
    assert lm.eval_batch_size(1024, (1024,), 50304) == MAX_EVAL_LOGITS // (1024 * 50304) == 2
    assert lm.eval_batch_size(1024, (64,), 256) == 1024  # byte-level tokens: no cap needed
    assert Classification().eval_batch_size(1024, (3, 32, 32), 10) == 1024


def test_evaluate_means_and_lm_gap() -> None:
    lm = LanguageModelling()
    logits = torch.zeros(4, 3, 5)
    logits[..., 1] = 2.0  # predicts token 1 everywhere
    targets = torch.ones(4, 3, dtype=torch.long)
    targets[0, 0] = 0

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[x[:, 0]]

    index = torch.arange(4).unsqueeze(1).repeat(1, 3)
    result = evaluate(Fixed(), lm, index, targets, batch_size=3)
    p_right = math.exp(2) / (math.exp(2) + 4)
    p_wrong = 1 / (math.exp(2) + 4)
    expected_loss = (11 * -math.log(p_right) - math.log(p_wrong)) / 12
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert result["acc"] == pytest.approx(11 / 12)
    assert result["ppl"] == pytest.approx(math.exp(expected_loss), rel=1e-6)
    gap = lm.gap({"loss": 1.0, "acc": 0.5, "ppl": math.e}, {"loss": 1.5, "acc": 0.4, "ppl": math.exp(1.5)})
    assert gap["loss"] == pytest.approx(0.5) and gap["acc"] == pytest.approx(-0.1)
    assert gap["ppl_ratio"] == pytest.approx(math.exp(0.5))


def test_regression_is_the_mean_squared_error_with_no_accuracy() -> None:
    from memexp.tasks import Regression

    task = Regression()
    output = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    target = torch.tensor([[0.0, 2.0], [1.0, 1.0], [3.0, 1.0]])
    # squared errors 1, 0, 1, 1, 0, 4: mean 7/6
    assert task.loss(output, target).item() == pytest.approx(7 / 6)

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return output[x]

    # Batches of 2 and 1 examples: the example-weighted mean is the mean over all six entries.
    result = evaluate(Fixed(), task, torch.arange(3), target, batch_size=2)
    assert result == pytest.approx({"loss": 7 / 6})
    assert task.gap({"loss": 0.5}, {"loss": 0.75}) == {"loss": 0.25}


MEMBER_CASES = [
    (Classification(), torch.randn(3, 7, 10), torch.randint(0, 10, (3, 7))),
    (Classification(), torch.randn(3, 7, 20), torch.randint(0, 20, (3, 7))),  # classes on the last dim
    (LanguageModelling(), torch.randn(3, 2, 5, 11), torch.randint(0, 11, (3, 2, 5))),
    (LanguageModelling(), torch.randn(3, 2, 5, 40), torch.randint(0, 40, (3, 2, 5))),
    (Regression(), torch.randn(3, 7, 4), torch.randn(3, 7, 4)),
]


@pytest.mark.parametrize("task, output, target", MEMBER_CASES)
def test_member_losses_and_counts_are_each_models_own(task, output: torch.Tensor, target: torch.Tensor) -> None:
    """The batched launcher's one-pass losses and correct counts of M models equal each model's own."""
    torch.testing.assert_close(
        task.member_loss(output, target), torch.stack([task.loss(o, t) for o, t in zip(output, target)])
    )
    counts, total = task.member_correct(output, target)
    own = [task.correct(o, t) for o, t in zip(output, target)]
    assert counts.tolist() == [float(c) for c, _ in own] and total == own[0][1]


@pytest.mark.parametrize("task, output, target", MEMBER_CASES)
def test_the_written_out_loss_gradient_is_autograds(task, output: torch.Tensor, target: torch.Tensor) -> None:
    """Each task's closed-form member_loss_and_gradient (the batched launcher's written-out backward)
    against autograd through its member_loss: the losses and the gradient of their sum (both in
    float32, as the tasks compute losses)."""
    losses, grad = task.member_loss_and_gradient(output, target)
    assert type(task).member_loss_and_gradient is not Task.member_loss_and_gradient  # the closed form
    want_losses, want_grad = Task.member_loss_and_gradient(task, output, target)  # autograd
    torch.testing.assert_close(losses, want_losses, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-8)
    assert grad.shape == output.shape
