"""Curvature estimators on a symmetric linear operator given by its matrix-block product.

``matmat(V)`` returns ``A @ V`` for a (D, K) block (a :class:`~memexp.metrics.hvp.HessianOperator`
in training, a dense matrix in the tests). Every random vector comes from a generator seeded with
``seed``, so the same call gives the same probes: the same every evaluation, for every optimizer.

Why the top eigenvalue is computed here rather than by curvlinops: curvlinops supplies the
Hessian-vector products but has no top-eigenvalue routine of its own (its docs export the operator
to SciPy's ARPACK ``eigsh``, which runs on the host in float64 and whose budget counts restarts, not
products). A Lanczos loop with full re-orthogonalisation on the device gives an exact product
budget, a residual-based tolerance and a fixed start vector. Hutchinson's trace and diagonal are
computed together from ONE set of probes (curvlinops' ``hutchinson_trace`` and ``hutchinson_diag``
would each draw their own from the global generator), which halves the cost of R_med plus trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MatMat = Callable[[Tensor], Tensor]
EIGEN_METHODS = ("lanczos", "power")


@dataclass
class EigenResult:
    value: float  # the largest (algebraic) eigenvalue estimate
    iterations: int  # operator products spent
    residual: float  # |A q - value q| for the returned Ritz vector, relative to |value|
    converged: bool


def rademacher(shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Entries +-1 with probability 1/2, drawn on ``generator``'s device, then moved."""
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (bits.to(device=device, dtype=dtype) * 2) - 1


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed(seed)
    return generator


def top_eigenvalue(
    matmat: MatMat,
    dim: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    max_iterations: int = 20,
    tolerance: float = 1e-3,
    seed: int = 0,
    method: str = "lanczos",
) -> EigenResult:
    """Largest algebraic eigenvalue of a symmetric operator (the sharpness when it is a Hessian).

    ``lanczos``: Lanczos with full re-orthogonalisation, stopped when the Ritz residual
    ``|beta_k * s_k|`` of the top Ritz pair falls below ``tolerance * |theta|`` or after
    ``max_iterations`` products. ``power``: power iteration on the same budget, stopped when the
    Rayleigh quotient's residual ``|A q - theta q|`` falls below ``tolerance * |theta|``. Power
    iteration returns the eigenvalue of largest MAGNITUDE; at a minimum (or a near-minimum, where the
    negative curvature is small) that is the largest one, but Lanczos is the safe default.
    """
    if method not in EIGEN_METHODS:
        raise ValueError(f"method must be one of {EIGEN_METHODS}, not {method!r}")
    generator = seeded_generator(seed, device)
    start = torch.randn(dim, generator=generator, device=generator.device).to(device=device, dtype=dtype)
    start /= torch.linalg.vector_norm(start)
    if method == "power":
        return _power(matmat, start, max(1, max_iterations), tolerance)
    # A Krylov space cannot grow past the dimension: after `dim` steps Lanczos is exact.
    return _lanczos(matmat, start, max(1, min(max_iterations, dim)), tolerance)


def _power(matmat: MatMat, q: Tensor, max_iterations: int, tolerance: float) -> EigenResult:
    theta, residual = 0.0, math.inf
    for iteration in range(1, max_iterations + 1):
        aq = matmat(q[:, None])[:, 0]
        theta = float(q @ aq)
        residual = float(torch.linalg.vector_norm(aq - theta * q)) / max(abs(theta), 1e-30)
        norm = torch.linalg.vector_norm(aq)
        if residual <= tolerance or norm == 0:
            return EigenResult(theta, iteration, residual, True)
        q = aq / norm
    return EigenResult(theta, max_iterations, residual, False)


def _lanczos(matmat: MatMat, q: Tensor, max_iterations: int, tolerance: float) -> EigenResult:
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    theta, residual = 0.0, math.inf
    for iteration in range(1, max_iterations + 1):
        w = matmat(basis[-1][:, None])[:, 0]
        alphas.append(float(basis[-1] @ w))
        # Full re-orthogonalisation (twice is enough, Parlett's rule): in fp32 plain three-term
        # Lanczos loses orthogonality within a few steps and produces ghost copies of the top value.
        stacked = torch.stack(basis, dim=1)
        for _ in range(2):
            w = w - stacked @ (stacked.T @ w)
        beta = float(torch.linalg.vector_norm(w))
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(tridiagonal)
        theta = float(values[-1])
        residual = abs(beta * float(vectors[-1, -1])) / max(abs(theta), 1e-30)
        if residual <= tolerance or beta <= 1e-12 * max(abs(theta), 1.0):
            return EigenResult(theta, iteration, residual, True)
        if iteration < max_iterations:
            betas.append(beta)
            basis.append(w / beta)
    return EigenResult(theta, max_iterations, residual, False)


@dataclass
class HutchinsonResult:
    trace: float  # mean of z^T A z
    trace_std_error: float  # standard error of that mean over the probes
    diagonal: Tensor  # mean of z * (A z), flat (D,)
    probes: int


def hutchinson(
    matmat: MatMat,
    dim: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    probes: int = 100,
    seed: int = 0,
    block: int = 16,
) -> HutchinsonResult:
    """Trace and diagonal of a symmetric operator from the same Rademacher probes z:
    ``trace ~ mean z^T A z`` (unbiased; variance ``2 (|A|_F^2 - sum_i A_ii^2)`` per probe), and
    ``diag ~ mean z * A z`` (unbiased; exact for a diagonal A). Probes are drawn ``block`` at a time
    from one seeded generator, so the set does not depend on ``block``."""
    generator = seeded_generator(seed, device)
    diagonal = torch.zeros(dim, device=device, dtype=dtype)
    quadratic_forms: list[Tensor] = []
    remaining = probes
    while remaining > 0:
        count = min(block, remaining)
        z = rademacher((count, dim), generator, device, dtype).T.contiguous()  # (D, count)
        az = matmat(z)
        diagonal += (z * az).sum(dim=1)
        quadratic_forms.append((z * az).sum(dim=0))
        remaining -= count
    forms = torch.cat(quadratic_forms).double()
    std_error = float(forms.std() / math.sqrt(probes)) if probes > 1 else math.inf
    return HutchinsonResult(float(forms.mean()), std_error, diagonal / probes, probes)


def exact_diagonal_slice(
    matmat: MatMat,
    dim: int,
    start: int,
    stop: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    block: int = 64,
) -> Tensor:
    """``A_ii`` for ``start <= i < stop``, exactly, from products with the unit vectors e_i."""
    diagonal = []
    for first in range(start, stop, block):
        last = min(first + block, stop)
        units = torch.zeros(dim, last - first, device=device, dtype=dtype)
        units[torch.arange(first, last), torch.arange(last - first)] = 1.0
        diagonal.append(matmat(units)[torch.arange(first, last), torch.arange(last - first)])
    return torch.cat(diagonal)


def median(values: Tensor) -> Tensor:
    """The median in the usual sense (mean of the two middle values for an even count); torch.median
    returns the lower one."""
    ordered = values.flatten().sort().values
    n = ordered.numel()
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


@dataclass
class RMed:
    value: float  # max_i |H_ii| / median_i |H_ii|
    negative_fraction: float  # fraction of H_ii < 0


def r_med(diagonal: Tensor) -> RMed:
    """Jiang, Malik & Li's R_med of one weight tensor from its Hessian diagonal (spec choice: absolute
    values, as in Ahn et al.'s replication): max |H_ii| / median |H_ii|. inf when the median is 0."""
    magnitude = diagonal.abs().double()
    middle = float(median(magnitude))
    largest = float(magnitude.max())
    value = largest / middle if middle > 0 else (math.inf if largest > 0 else math.nan)
    return RMed(value, float((diagonal < 0).double().mean()))
