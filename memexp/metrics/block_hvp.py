"""Block Hessian-vector products of the probe-set loss: its gradient and its Hessian as a linear
operator on flat parameter vectors, multiplied a block of vectors at a time.

Everything here is evaluated on a FIXED probe batch with the model in eval mode (no dropout,
BatchNorm on its running statistics) and in fp32 without autocast: curvature estimators silently
break on a stochastic or low-precision loss. The probe batch may be split into chunks to bound
memory; the loss is the example-weighted mean over the chunks, i.e. exactly the mean loss over the
whole probe batch.

Hessian-vector products come from one of two backends:

- ``autodiff``: curvlinops' :class:`~curvlinops.HessianLinearOperator` (forward-over-reverse
  autodiff through ``torch.func``, exact, tested upstream against dense float64 Hessians). It
  multiplies a block of K vectors at once (``vmap``), which is what makes 100 Hutchinson probes
  affordable.
- ``finite_difference``: central differences of gradients,
  ``H v ~ (grad L(theta + r v/|v|) - grad L(theta - r v/|v|)) |v| / (2 r)``, two gradient
  evaluations per vector. It works for every model, including ones with ops that have no double
  backward / forward-mode derivative (fused attention kernels, some custom CUDA ops).

  Caveat: on piecewise-linear networks (ReLU) a step of size ``fd_step`` crosses activation kinks,
  and the difference quotient is not the autodiff (almost-everywhere) Hessian: on the default MLP
  on digits it differed from it by several times its norm (scripts/bench_metrics.py reports the
  error), while on a tanh MLP in float64 it agreed to 1e-9. Use it only where autodiff cannot run.

``auto`` tries ``autodiff`` once per model and falls back to ``finite_difference`` with a warning.

Why curvlinops and not a hand-written double backward: scripts/bench_metrics.py measured on the
default MLP (26k parameters, 256 probe examples, one CPU thread) 6.7 ms per product for curvlinops
against 7.0 ms for a double backward when 16 vectors go together (Hutchinson, exact diagonals), and
25 ms against 12 ms for one vector at a time (Lanczos), the per-call cost of its torch.func
transforms. Not too slow, and it brings upstream tests against dense float64 Hessians and its
determinism probe.
Transformer attention runs on the math SDPA kernel during curvature passes (the flash and
memory-efficient kernels have no second derivatives).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]
HVP_BACKENDS = ("auto", "autodiff", "finite_difference")


class LossModule(nn.Module):
    """A task loss (mean over the batch) as the ``nn.Module`` curvlinops expects: it reads
    ``reduction`` to weight the probe chunks by their size."""

    reduction = "mean"

    def __init__(self, loss_fn: LossFn) -> None:
        super().__init__()
        self.loss_fn = loss_fn

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return self.loss_fn(output, target)


@contextmanager
def curvature_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and the math attention kernel for the duration; the previous mode and the global
    RNG state are restored afterwards, so a metrics pass never changes the training trajectory
    (curvlinops' determinism probe, for one, draws from the global generator)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was_training = model.training
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), sdpa_kernel(SDPBackend.MATH):
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


def split_batch(x: Tensor, y: Tensor, chunk_size: int) -> list[Batch]:
    """The probe batch as chunks of at most ``chunk_size`` examples (0: one chunk)."""
    if chunk_size <= 0 or chunk_size >= x.shape[0]:
        return [(x, y)]
    return list(zip(x.split(chunk_size), y.split(chunk_size)))


def flatten(tensors: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: list[Tensor]) -> list[Tensor]:
    return [part.view_as(p) for part, p in zip(vector.split([p.numel() for p in like]), like)]


class ProbeLoss:
    """Mean loss of ``model`` on the probe chunks, and its gradient, as functions of the trainable
    parameters (optionally at displaced parameter values, without touching the model)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: list[Batch]) -> None:
        self.model, self.loss_fn, self.batches = model, loss_fn, batches
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.num_examples = sum(x.shape[0] for x, _ in batches)
        self.dim = sum(p.numel() for p in self.params)

    def loss_and_gradient(self, displacement: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Loss and flat gradient at ``theta`` (or at ``theta + displacement``, flat)."""
        total_loss = torch.zeros((), device=self.params[0].device, dtype=self.params[0].dtype)
        total_grad = torch.zeros(self.dim, device=total_loss.device, dtype=total_loss.dtype)
        shifted: dict[str, Tensor] | None = None
        for x, y in self.batches:
            weight = x.shape[0] / self.num_examples
            with torch.enable_grad():
                if displacement is None:
                    loss = self.loss_fn(self.model(x), y)
                    grads = torch.autograd.grad(loss, self.params)
                else:
                    if shifted is None:
                        deltas = unflatten(displacement, self.params)
                        shifted = {
                            n: (p.detach() + d).requires_grad_() for n, p, d in zip(self.names, self.params, deltas)
                        }
                    loss = self.loss_fn(functional_call(self.model, shifted, (x,)), y)
                    grads = torch.autograd.grad(loss, list(shifted.values()))
            total_loss += weight * loss.detach()
            total_grad += weight * flatten([g.detach() for g in grads])
        return total_loss, total_grad


@contextmanager
def quiet_forward_ad_import() -> Iterator[None]:
    """torch's forward-AD decompositions call the deprecated ``torch.jit.script`` on first use;
    that FutureWarning is torch's business, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        yield


class HessianOperator:
    """The Hessian of the probe loss w.r.t. the trainable parameters, on flat vectors.

    ``matmat`` takes a (D, K) block and returns H times it; ``max_columns`` bounds how many
    vectors are multiplied at once (memory grows with K for the autodiff backend).
    """

    def __init__(
        self,
        probe: ProbeLoss,
        backend: str,
        fd_step: float = 1e-3,
        max_columns: int = 16,
        check_deterministic: bool = False,
    ) -> None:
        if backend not in ("autodiff", "finite_difference"):
            raise ValueError(f"backend must be autodiff or finite_difference, not {backend!r}")
        self.probe, self.backend, self.fd_step, self.max_columns = probe, backend, fd_step, max(1, max_columns)
        self.dim = probe.dim
        self.matvecs = 0  # Hessian-vector products spent, for the cost report
        self._curvlinops = None
        if backend == "autodiff":
            with quiet_forward_ad_import():  # linear_operator (a curvlinops dependency) jit-scripts at import
                from curvlinops import HessianLinearOperator

            # curvlinops' own determinism probe (two gradient passes and two matvecs, compared)
            # catches dropout or train-mode BatchNorm, which would corrupt Lanczos and Hutchinson.
            try:
                with quiet_forward_ad_import():
                    self._curvlinops = HessianLinearOperator(
                        probe.model,
                        LossModule(probe.loss_fn),
                        probe.params,
                        probe.batches,
                        check_deterministic=check_deterministic,
                        num_data=probe.num_examples,
                    )
            except RuntimeError as error:
                if "deterministic" not in str(error):
                    raise
                raise NonDeterministicModelError(
                    f"metrics: the probe loss is not deterministic (curvlinops: {error}); a stochastic layer "
                    "active in eval mode? Curvature estimates would be meaningless"
                ) from error
        elif check_deterministic:
            determinism_probe(probe, self)

    def matvec(self, vector: Tensor) -> Tensor:
        return self.matmat(vector.unsqueeze(1)).squeeze(1)

    def matmat(self, block: Tensor) -> Tensor:
        columns = [self._matmat(part) for part in block.split(self.max_columns, dim=1)]
        self.matvecs += block.shape[1]
        return torch.cat(columns, dim=1)

    def _matmat(self, block: Tensor) -> Tensor:
        if self._curvlinops is not None:
            with quiet_forward_ad_import():
                return self._curvlinops @ block
        return torch.stack([self._finite_difference(block[:, k]) for k in range(block.shape[1])], dim=1)

    def _finite_difference(self, vector: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(vector)
        if norm == 0:
            return torch.zeros_like(vector)
        step = self.fd_step * vector / norm
        _, plus = self.probe.loss_and_gradient(step)
        _, minus = self.probe.loss_and_gradient(-step)
        return (plus - minus) * (norm / (2 * self.fd_step))


class TensorHessian:
    """The diagonal block ``H_WW`` of the probe-loss Hessian for ONE parameter tensor W (rows and
    columns: W's entries, flat), exactly: with every other parameter held fixed, the loss as a
    function of W alone has exactly this Hessian.

    Why not the full operator: a unit vector inside W needs only this block, but a full-parameter
    product (curvlinops, forward-over-reverse) propagates tangents and gradients through every tensor
    and then discards all but W's entries. Here W is the only differentiable leaf, so the graph of
    ``g = dL/dW`` (built once, ``create_graph``) holds only the network downstream of W and W's own
    gradient; a block of K vectors V is ONE batched backward through it, ``H V = d(g . V)/dW``
    (``is_grads_batched``: vmap over the K grad_outputs). The forward and first backward are paid once
    per pass, not once per product. Autodiff only (double backward); its products are counted in
    ``parent.matvecs``."""

    def __init__(self, parent: HessianOperator, index: int) -> None:
        probe = parent.probe
        self.parent, self.shape = parent, probe.params[index].shape
        self.dim = probe.params[index].numel()
        name = probe.names[index]
        # Every other parameter detached: the graph stops where W enters (tied weights follow W).
        fixed = {n: p.detach() for n, p in zip(probe.names, probe.params) if n != name}
        with torch.enable_grad():
            self.leaf = probe.params[index].detach().clone().requires_grad_()
            gradient = torch.zeros_like(self.leaf)
            for x, y in probe.batches:
                loss = probe.loss_fn(functional_call(probe.model, {**fixed, name: self.leaf}, (x,)), y)
                (part,) = torch.autograd.grad(loss, self.leaf, create_graph=True)
                gradient = gradient + (x.shape[0] / probe.num_examples) * part
        self.gradient = gradient

    def matmat(self, block: Tensor) -> Tensor:
        """``H_WW @ block`` for a (numel(W), K) block, ``parent.max_columns`` columns per backward."""
        columns = [self._matmat(part) for part in block.split(self.parent.max_columns, dim=1)]
        self.parent.matvecs += block.shape[1]
        return torch.cat(columns, dim=1)

    def _matmat(self, block: Tensor) -> Tensor:
        count = block.shape[1]
        if not self.gradient.requires_grad:  # W does not affect its own gradient: the loss is linear in W
            return torch.zeros_like(block)
        outputs = block.T.reshape(count, *self.shape).to(self.gradient.dtype)
        (product,) = torch.autograd.grad(
            self.gradient, self.leaf, grad_outputs=outputs, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        if product is None:  # the gradient depends on other parameters only: H_WW = 0
            return torch.zeros_like(block)
        return product.reshape(count, self.dim).T.to(block.dtype)


class NonDeterministicModelError(RuntimeError):
    """The probe loss is not a deterministic function of the parameters."""


def determinism_probe(
    probe: ProbeLoss, operator: HessianOperator | None = None, rtol: float = 5e-5, atol: float = 1e-6
) -> None:
    """Evaluate the loss, gradient (and one HVP) twice and require equal results, like curvlinops'
    check: dropout or train-mode BatchNorm would make every curvature estimate meaningless."""
    first, second = probe.loss_and_gradient(), probe.loss_and_gradient()
    pairs = [("loss", first[0], second[0]), ("gradient", first[1], second[1])]
    if operator is not None:
        vector = torch.ones(probe.dim, device=first[1].device, dtype=first[1].dtype)
        pairs.append(("Hessian-vector product", operator._matmat(vector[:, None]), operator._matmat(vector[:, None])))
    for what, a, b in pairs:
        if not torch.allclose(a, b, rtol=rtol, atol=atol):
            raise NonDeterministicModelError(
                f"metrics: the probe loss is not deterministic: its {what} differs between two identical "
                "evaluations (a stochastic layer active in eval mode?); curvature estimates would be meaningless"
            )


def choose_backend(probe: ProbeLoss, requested: str, fd_step: float) -> str:
    """``auto``: autodiff when one product on this model works, else finite differences (warned)."""
    if requested != "auto":
        return requested
    try:
        operator = HessianOperator(probe, "autodiff", fd_step)
        operator.matvec(torch.zeros(probe.dim, device=probe.params[0].device, dtype=probe.params[0].dtype))
        return "autodiff"
    except (RuntimeError, NotImplementedError) as error:
        warnings.warn(
            f"metrics: autodiff Hessian-vector products are not supported by this model ({error}); "
            "using finite differences of gradients",
            stacklevel=2,
        )
        return "finite_difference"
