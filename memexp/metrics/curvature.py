"""Curvature estimators on a symmetric linear operator given by its matrix-block product.

``matmat(V)`` returns ``A @ V`` for a (D, K) block (a :class:`~memexp.metrics.block_hvp.HessianOperator`
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
    trace: float  # mean of z^T A z (over the support)
    trace_std_error: float  # standard error of that mean over the probes
    diagonal: Tensor  # mean of z * (A z) on the support, flat (stop - start,)
    probes: int
    # Mean of z * (A z) over each of ``groups`` consecutive runs of probes, (stop - start, groups):
    # what a bootstrap over the probes resamples. None when no groups were asked for.
    group_diagonals: Tensor | None = None


def hutchinson(
    matmat: MatMat,
    dim: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    probes: int = 100,
    seed: int = 0,
    block: int = 16,
    groups: int = 0,
    support: tuple[int, int] | None = None,
) -> HutchinsonResult:
    """Trace and diagonal of a symmetric operator from the same Rademacher probes z:
    ``trace ~ mean z^T A z`` (unbiased; variance ``2 (|A|_F^2 - sum_i A_ii^2)`` per probe), and
    ``diag ~ mean z * A z`` (unbiased; exact for a diagonal A; entry i has variance
    ``sum_{j != i} A_ij^2`` per probe). Probes are drawn ``block`` at a time from one seeded
    generator, so the set does not depend on ``block``.

    ``support = (start, stop)``: the probes are zero outside coordinates ``start:stop`` and the
    result is the trace and diagonal of the block ``A[start:stop, start:stop]``: the rest of the
    operator adds no variance (per-tensor probing). ``groups > 0``: also the mean over each of that
    many consecutive runs of probes (for :func:`bootstrap_r_med`)."""
    start, stop = support if support is not None else (0, dim)
    width = stop - start
    groups = min(groups, probes)
    generator = seeded_generator(seed, device)
    diagonal = torch.zeros(width, device=device, dtype=dtype)
    group_sums = torch.zeros(width, groups, device=device, dtype=dtype) if groups > 0 else None
    quadratic_forms: list[Tensor] = []
    done = 0
    while done < probes:
        count = min(block, probes - done)
        z = rademacher((count, width), generator, device, dtype).T.contiguous()  # (width, count)
        if width == dim:
            az = matmat(z)
        else:
            embedded = torch.zeros(dim, count, device=device, dtype=dtype)
            embedded[start:stop] = z
            az = matmat(embedded)[start:stop]
        contributions = z * az
        diagonal += contributions.sum(dim=1)
        if group_sums is not None:
            # Probe k belongs to group floor(k * groups / probes): groups of (almost) equal size.
            owner = (torch.arange(done, done + count, device=device) * groups) // probes
            group_sums.index_add_(1, owner, contributions)
        quadratic_forms.append(contributions.sum(dim=0))
        done += count
    forms = torch.cat(quadratic_forms).double()
    std_error = float(forms.std() / math.sqrt(probes)) if probes > 1 else math.inf
    group_diagonals = None
    if group_sums is not None:
        sizes = torch.bincount((torch.arange(probes) * groups) // probes, minlength=groups)
        group_diagonals = group_sums / sizes.to(device=device, dtype=dtype)
    return HutchinsonResult(float(forms.mean()), std_error, diagonal / probes, probes, group_diagonals)


def exact_diagonal_entries(
    matmat: MatMat,
    dim: int,
    indices: Tensor,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    block: int = 64,
) -> Tensor:
    """``A_ii`` for each i in ``indices`` (flat coordinates), exactly, from products with the unit
    vectors e_i, ``block`` at a time: one product per entry."""
    indices = indices.to(device)
    diagonal = []
    for part in indices.split(block):
        columns = torch.arange(part.numel(), device=device)
        units = torch.zeros(dim, part.numel(), device=device, dtype=dtype)
        units[part, columns] = 1.0
        diagonal.append(matmat(units)[part, columns])
    return torch.cat(diagonal) if diagonal else torch.zeros(0, device=device, dtype=dtype)


def exact_diagonal_slice(
    matmat: MatMat,
    dim: int,
    start: int,
    stop: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    block: int = 64,
) -> Tensor:
    """``A_ii`` for ``start <= i < stop``, exactly (one unit-vector product per entry)."""
    return exact_diagonal_entries(matmat, dim, torch.arange(start, stop), device, dtype, block)


def subset_indices(size: int, count: int, seed: int, salt: int) -> Tensor:
    """``count`` distinct coordinates of a tensor of ``size`` entries (all of them when it has no
    more), sorted, from a CPU generator seeded by ``(seed, salt)`` alone: the same subset for every
    optimizer, training seed and device."""
    if count >= size:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + salt)
    return torch.randperm(size, generator=generator)[:count].sort().values


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
    value = float(r_med_columns(diagonal.reshape(-1, 1))[0])
    return RMed(value, float((diagonal < 0).double().mean()))


def r_med_columns(diagonals: Tensor) -> Tensor:
    """R_med of each column of ``diagonals`` (n, B), float64 (B,): inf where a column's median is 0
    and its max is not, nan where the column is all 0."""
    magnitude = diagonals.abs().double()
    ordered = magnitude.sort(dim=0).values
    n = ordered.shape[0]
    middle = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    largest = ordered[-1]
    ratio = largest / middle.clamp_min(torch.finfo(torch.float64).tiny)
    ratio = torch.where(middle > 0, ratio, torch.where(largest > 0, math.inf, math.nan))
    return ratio


def bootstrap_weights(groups: int, resamples: int, seed: int, device: torch.device) -> Tensor:
    """(groups, resamples): column b holds how often each group is drawn in resample b (groups
    draws with replacement), divided by ``groups``, so ``group_diagonals @ weights`` is the resampled
    mean diagonal. From a CPU generator seeded by ``seed``: the same resamples for every tensor
    (tensors estimated from the same probes are resampled jointly)."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, groups, (resamples, groups), generator=generator)
    counts = torch.zeros(resamples, groups, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(resamples, groups, dtype=torch.float64)
    )
    return (counts / groups).T.contiguous().to(device)


def bootstrap_r_med(group_diagonals: Tensor, weights: Tensor) -> Tensor:
    """R_med of each bootstrap resample (resamples,) of a Hutchinson diagonal given as group means
    (n, groups) and :func:`bootstrap_weights` (groups, resamples)."""
    return r_med_columns(group_diagonals.double() @ weights.to(group_diagonals.device, torch.float64))


def basic_bootstrap_interval(estimate: float, replicates: Tensor, confidence: float) -> tuple[float, float]:
    """The basic (reverse-percentile) bootstrap interval ``[2 R - q_hi, 2 R - q_lo]`` with q the
    replicates' quantiles: it corrects the estimator's bias to first order (probe noise inflates
    both the max and the median of |H_ii|, and a resample adds the same noise again, so the
    percentile interval would sit on the wrong side). Clipped below at 1, since R_med >= 1.
    (nan, nan) when a replicate is not finite."""
    finite = replicates[torch.isfinite(replicates)]
    if finite.numel() < replicates.numel() or not math.isfinite(estimate):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low_q, high_q = torch.quantile(finite, torch.tensor([tail, 1 - tail], dtype=finite.dtype)).tolist()
    return max(1.0, 2 * estimate - high_q), max(1.0, 2 * estimate - low_q)
