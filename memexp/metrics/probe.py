"""One metrics pass: every selected ``geom/*`` metric of (model, loss, probe batch, optimizer).

:func:`compute_metrics` is the pure entry point. :class:`GeometryProbe` is the thin stateful
wrapper the training loop holds: the fixed probe batch, the schedule, the Hessian-vector backend
chosen once, the weights before a metrics step (for the update-to-weight ratio).
"""

from __future__ import annotations

import fnmatch
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memexp.config import MetricsConfig, RMedMethod, TrackSchedule
from memexp.errors import require
from memexp.metrics import curvature, geometry
from memexp.metrics.block_hvp import (
    HessianOperator,
    LossFn,
    ProbeLoss,
    TensorHessian,
    choose_backend,
    curvature_mode,
    split_batch,
)
from memexp.metrics.optimizer_family import (
    adam_preconditioner,
    adaptive_beta_stats,
    decoupled_decay,
    memory_family,
    steps_taken,
)
from memexp.optim.memory import (
    PENALTY_NORM,
    MemoryFamily,
    adam_lag,
    heavy_ball_coefficients,
    hvp_directions,
    implicit_penalty,
    penalty_coefficient,
    sign,
)

# An exact R_med pass over more parameters than this is worth a warning (~1 h on 2 CPU cores).
EXACT_PRODUCTS_WARNING = 100_000
CURVATURE_METRICS = ("sharpness", "sharpness_precond", "hessian_trace", "correction_ratio", "r_med")


class MetricsSchedule:
    """When metrics are due. ``linear``: every ``every`` steps. ``log``: ``per_decade`` log-spaced
    steps per factor of 10 (1, 2, 3, 4, 5, 6, 8, 10, 13, ... for 10 per decade), plus every
    ``every`` steps, so the early transient is resolved and late training is never sparser than the
    linear schedule. The last step is always included. ``every = 0``: never."""

    def __init__(
        self, every: int, max_steps: int, schedule: TrackSchedule = TrackSchedule.linear, per_decade: int = 10
    ) -> None:
        self.every, self.max_steps = every, max_steps
        self.log_steps: set[int] = set()
        if schedule is TrackSchedule.log and every > 0:
            exponent = 0
            while (point := round(10 ** (exponent / per_decade))) <= max_steps:
                self.log_steps.add(point)
                exponent += 1

    def due(self, step: int) -> bool:
        if self.every <= 0:
            return False
        return step % self.every == 0 or step == self.max_steps or step in self.log_steps


@dataclass
class ProbeState:
    """What a metrics pass may reuse from the previous one (none of it changes the values)."""

    backend: str | None = None  # the Hessian-vector backend chosen on the first curvature pass
    determinism_checked: bool = False


def compute_metrics(
    model: nn.Module,
    loss_fn: LossFn,
    batch: tuple[Tensor, Tensor],
    optimizer: torch.optim.Optimizer,
    cfg: MetricsConfig,
    step: int | None = None,
    weights_before: list[Tensor] | None = None,
    state: ProbeState | None = None,
) -> dict[str, float]:
    """All metrics ``cfg`` selects, as ``{"geom/...": float}``. The model is put in eval mode (and
    back), gradients are not touched (``torch.autograd.grad``), the global RNG state is restored:
    the training trajectory is the same with or without this call."""
    state = state or ProbeState()
    selected = set(cfg.metrics())
    if cfg.r_med_at_steps and step not in cfg.r_med_at_steps:
        selected.discard("r_med")  # R_med only at the chosen steps (an exact diagonal is expensive)
    out: dict[str, float] = {}
    with curvature_mode(model):
        probe = ProbeLoss(model, loss_fn, split_batch(*batch, cfg.probe_chunk))
        names, params = probe.names, probe.params
        groups = group_of(optimizer, params)
        family = memory_family(optimizer)
        n = steps_taken(optimizer, step)

        gradient: Tensor | None = None
        probe_loss = 0.0
        if selected & {"grad_norms", "correction", "correction_ratio"}:
            loss, gradient = probe.loss_and_gradient()
            probe_loss = float(loss)
            out["geom/probe_loss"] = probe_loss
        if "grad_norms" in selected and gradient is not None:
            out.update(geometry.gradient_norms(gradient))
        if "weight_norm" in selected:
            out.update(geometry.weight_norms(names, params))
        if "update_ratio" in selected and weights_before is not None:
            out.update(geometry.update_ratios(names, params, weights_before))
        if "lion_constraint" in selected:
            decoupled = decoupled_decay(optimizer)
            decay = [float(g["weight_decay"]) if decoupled else 0.0 for g in groups]
            out.update(geometry.lion_constraint(names, params, decay))
        if "am_beta" in selected:
            out.update(adaptive_beta_stats(optimizer))
        correction: Correction | None = None
        if selected & {"correction", "correction_ratio"} and gradient is not None:
            correction = Correction.build(optimizer, family, groups, params, gradient, n, probe_loss)
            if correction is not None and "correction" in selected:
                out.update(correction.summary())

        wanted = [name for name in CURVATURE_METRICS if name in selected]
        if wanted:
            out.update(curvature_metrics(probe, optimizer, cfg, wanted, correction, state))
    return out


def group_of(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> list[dict]:
    """The param group of each parameter (a parameter the optimizer does not train gets a group with
    lr = 0 and no weight decay: it has no correction and no decay)."""
    by_param = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    untrained = {**optimizer.param_groups[0], "params": [], "lr": 0.0, "weight_decay": 0.0}
    return [by_param.get(id(p), untrained) for p in params]


@dataclass
class Correction:
    """The implicit correction of the running optimizer at the current iterate (docs/memory_theory.md).

    Per coordinate: the penalty coefficient ``coef`` of its param group (memexp.optim.memory, the
    twins' own), ``g_eff`` = the gradient the optimizer sees (coupled weight decay included),
    ``coupled`` = the coupled decay (adds ``coupled * v`` to every Hessian product), ``decoupled`` =
    the decoupled decay (its part of the modified loss, lambda (theta.g - L), is in ``summary``)."""

    family: MemoryFamily
    coef: Tensor
    g_eff: Tensor
    coupled: Tensor
    lr: Tensor
    decoupled: Tensor
    theta: Tensor
    n: int | None
    betas: list[tuple[float, float]]  # per coordinate group: (beta1, beta2) or (momentum, 0)
    group_index: Tensor
    eps: Tensor
    loss: float  # L at the iterate (the probe set's), for the decoupled decay's term
    # The coefficient at unit step size: its sign is the memory's direction even where the
    # schedule's lr is 0 (e.g. the last step of a cosine schedule), when ``coef`` itself is 0.
    unit_coef: Tensor | None = None

    @staticmethod
    def build(
        optimizer: torch.optim.Optimizer,
        family: MemoryFamily | None,
        groups: list[dict],
        params: list[nn.Parameter],
        gradient: Tensor,
        n: int | None,
        loss: float = 0.0,
    ) -> Correction | None:
        if family not in PENALTY_NORM or not groups:
            return None  # no memory theory for this optimizer (adaptive memory, unknown)
        if any(g.get("kernel", "l1") != "l1" for g in groups):
            return None  # Lion-K: the penalty is h C/W K(grad L), not the l1 norm reported here
        coefs = [penalty_coefficient(family, g, n) for g in groups]
        flat = lambda values: geometry.flat_per_parameter(values, params)  # noqa: E731
        decoupled = decoupled_decay(optimizer)
        decay = [float(g.get("weight_decay", 0.0)) for g in groups]
        coupled = flat([0.0 if decoupled else w for w in decay])
        theta = torch.cat([p.detach().reshape(-1) for p in params])
        order = list(dict.fromkeys(id(g) for g in groups))
        group_ids = [order.index(id(g)) for g in groups]
        betas_by_group: dict[int, tuple[float, float]] = {}
        for g, gid in zip(groups, group_ids):
            if "betas" in g:
                betas_by_group[gid] = (float(g["betas"][0]), float(g["betas"][1]))
            else:
                betas_by_group[gid] = (float(g.get("momentum", 0.0)), 0.0)
        return Correction(
            family=family,
            coef=flat(coefs),
            g_eff=gradient + coupled * theta,
            coupled=coupled,
            lr=flat([float(g["lr"]) for g in groups]),
            decoupled=flat([w if decoupled else 0.0 for w in decay]),
            theta=theta,
            n=n,
            betas=[betas_by_group[i] for i in range(len(betas_by_group))],
            group_index=flat(group_ids).long(),
            eps=flat([float(g.get("eps", 0.0)) for g in groups]),
            loss=loss,
            unit_coef=flat([penalty_coefficient(family, {**g, "lr": 1.0}, n) for g in groups]),
        )

    def penalty(self) -> float:
        """The memory's implicit penalty: memexp.optim.memory.implicit_penalty summed over the param
        groups, in float64 (each group with its own coefficient, decay and coordinates)."""
        g_eff, theta = self.g_eff.double(), self.theta.double()
        total = 0.0
        for gid in range(len(self.betas)):
            mask = self.group_index == gid
            gradient = g_eff[mask]
            norm = gradient.pow(2).sum() if PENALTY_NORM[self.family] == "l2sq" else gradient.abs().sum()
            coef, decay = float(self.coef[mask][0]), float(self.decoupled[mask][0])
            theta_dot = (theta[mask] * gradient).sum() if decay else 0.0
            total = total + implicit_penalty(self.family, coef, norm, theta_dot, decay, self.loss)
        return float(total)

    def summary(self) -> dict[str, float]:
        weighted_coef = self.coef.mean(dtype=torch.float64).item()
        # The sign is the coefficient's (the memory's direction), not the value's: at a stationary
        # point the value is 0 but the memory still (anti-)regularizes. It follows from the
        # hyperparameters alone (docs/optimizers.md): a label of the run, not a measurement.
        direction = weighted_coef
        if self.unit_coef is not None:
            direction = self.unit_coef.mean(dtype=torch.float64).item()
        return {
            "geom/correction": self.penalty(),
            "geom/correction_sign": sign(direction),
            "geom/correction_coef": weighted_coef,
        }

    def hvp_direction(self) -> Tensor:
        """The vector the twin multiplies H with (memexp.optim.memory.hvp_directions)."""
        return hvp_directions(self.family, [self.g_eff], [self.theta], eps=self.eps, decoupled_decay=self.decoupled)[0]

    def ratio(self, hessian_times_direction: Tensor) -> float:
        """|h M(theta)| / |plain step| of the memoryless twin (docs/memory_theory.md), on the probe set."""
        direction = self.hvp_direction()
        hv = hessian_times_direction + self.coupled * direction
        h = self.lr
        if self.family is MemoryFamily.heavy_ball:
            # twin: h (s_n g + h c_n H g) = h s_n (g + 2 coef H g)
            weight = h * self._per_group(lambda b1, b2: heavy_ball_coefficients(b1, self.n)[0])
            plain, corr = weight * self.g_eff, weight * 2 * self.coef * hv
        elif self.family is MemoryFamily.adam:
            # twin: h (w + h (H w) * [A_n / (|g| + eps) - B_n |g| / (|g| + eps)^2]),  w = u + lambda theta
            a = self._per_group(lambda b1, b2: adam_lag(b1, self.n))
            b = self._per_group(lambda b1, b2: adam_lag(b2, self.n))
            denom = self.g_eff.abs() + self.eps
            plain = h * direction
            corr = h * h * hv * (a / denom - b * self.g_eff.abs() / denom**2)
        else:
            # Lion's twin: sign(g + h (C_n/W_n) H (sign g + lambda theta)): compare the two terms in the sign
            plain, corr = self.g_eff, self.coef * hv
        denominator = float(torch.linalg.vector_norm(plain.double()))
        numerator = float(torch.linalg.vector_norm(corr.double()))
        return numerator / denominator if denominator > 0 else (0.0 if numerator == 0 else math.inf)

    def _per_group(self, fn: Callable[[float, float], float]) -> Tensor:
        """``fn(beta1, beta2)`` of each coordinate's param group, flat."""
        values = torch.tensor([fn(b1, b2) for b1, b2 in self.betas], device=self.coef.device, dtype=self.coef.dtype)
        return values[self.group_index]


def curvature_metrics(
    probe: ProbeLoss,
    optimizer: torch.optim.Optimizer,
    cfg: MetricsConfig,
    wanted: list[str],
    correction: Correction | None,
    state: ProbeState,
) -> dict[str, float]:
    out: dict[str, float] = {}
    if state.backend is None:
        state.backend = choose_backend(probe, cfg.hvp.value, cfg.fd_step)
    check = cfg.check_deterministic and not state.determinism_checked
    operator = HessianOperator(probe, state.backend, cfg.fd_step, cfg.max_columns, check_deterministic=check)
    state.determinism_checked = True
    device, dtype, dim = probe.params[0].device, probe.params[0].dtype, probe.dim
    eigen = dict(
        max_iterations=cfg.sharpness_iters,
        tolerance=cfg.sharpness_tol,
        seed=cfg.seed,
        method=cfg.sharpness_method.value,
    )

    if "sharpness" in wanted:
        result = curvature.top_eigenvalue(operator.matmat, dim, device, dtype, **eigen)
        out["geom/sharpness"], out["geom/sharpness_residual"] = result.value, result.residual
    if "sharpness_precond" in wanted:
        preconditioner = adam_preconditioner(optimizer, probe.params)
        if preconditioner is not None:
            root = preconditioner.sqrt().to(dtype)[:, None]
            result = curvature.top_eigenvalue(lambda v: root * operator.matmat(root * v), dim, device, dtype, **eigen)
            out["geom/sharpness_precond"], out["geom/sharpness_precond_residual"] = result.value, result.residual
    if "correction_ratio" in wanted and correction is not None:
        out["geom/correction_ratio"] = correction.ratio(operator.matvec(correction.hvp_direction()))
    hutch: curvature.HutchinsonResult | None = None
    shared_probes = "r_med" in wanted and cfg.r_med_method is RMedMethod.hutchinson
    if "hessian_trace" in wanted or shared_probes:
        # One set of probes for the trace and a Hutchinson R_med (the groups cost no products).
        groups = cfg.r_med_bootstrap_groups if shared_probes and cfg.r_med_bootstrap > 0 else 0
        hutch = curvature.hutchinson(
            operator.matmat, dim, device, dtype, cfg.hutchinson_probes, cfg.seed, cfg.max_columns, groups
        )
        if "hessian_trace" in wanted:
            out["geom/hessian_trace"], out["geom/hessian_trace_stderr"] = hutch.trace, hutch.trace_std_error
    if "r_med" in wanted:
        out.update(r_med_metrics(probe, operator, cfg, hutch))
    out["geom/hvp_count"] = float(operator.matvecs)
    return out


@dataclass
class TensorDiagonal:
    """One tensor's Hessian diagonal as R_med sees it: exact (``replicates`` None) or estimated
    (``replicates``: R_med of each bootstrap resample of the probes)."""

    diagonal: Tensor
    replicates: Tensor | None = None
    exact: bool = False


def r_med_metrics(
    probe: ProbeLoss,
    operator: HessianOperator,
    cfg: MetricsConfig,
    hutch: curvature.HutchinsonResult | None = None,
) -> dict[str, float]:
    """R_med of every tensor with >= 2 entries (``geom/r_med/<name>``, the seed's per-layer
    statistic) and, as memexp's own summary, its median over the weight tensors (ndim >= 2; over
    all tensors when the model has none), ``geom/r_med``. How each diagonal is obtained is
    ``cfg.r_med_method`` (docs/rmed.md):

    - ``exact``: every diagonal entry from a unit-vector Hessian-vector product (one per entry);
    - ``subset``: exact entries at ``r_med_subset_size`` fixed random coordinates per tensor; the
      value is R_med of that sample (its median estimates the tensor's median; its max is at most
      the tensor's max), the same coordinates for every optimizer and seed;
    - ``hutchinson``: the diagonal of ``hutchinson_probes`` Rademacher probes over all parameters
      (shared with the Hessian trace);
    - ``hutchinson_per_tensor``: as many probes per tensor, zero outside it, so other tensors'
      curvature adds no variance (``hutchinson_probes`` products per tensor).

    Tensors of at most ``exact_diag_max_numel`` entries get their exact diagonal under every method,
    in model order while their products fit ``exact_diag_budget``; for the Hutchinson methods the
    estimate's relative error on them is logged (``geom/r_med_diag_error``), a probe-noise check.
    For the Hutchinson methods, with ``r_med_bootstrap`` > 0: a basic bootstrap interval over the
    probes (in ``r_med_bootstrap_groups`` groups), per tensor (``geom/r_med_lo/<name>``,
    ``geom/r_med_hi/<name>``) and for the summary (``geom/r_med_lo``, ``geom/r_med_hi``)."""
    method = cfg.r_med_method
    device, dtype = probe.params[0].device, probe.params[0].dtype
    estimated = method in (RMedMethod.hutchinson, RMedMethod.hutchinson_per_tensor)
    weights = None
    if estimated and cfg.r_med_bootstrap > 0:
        groups = min(cfg.r_med_bootstrap_groups, cfg.hutchinson_probes)
        weights = curvature.bootstrap_weights(groups, cfg.r_med_bootstrap, cfg.seed, device)
    out: dict[str, float] = {}
    diagonals: dict[str, TensorDiagonal] = {}
    is_weight: dict[str, bool] = {}
    errors: list[float] = []
    offset, budget, products_before = 0, cfg.exact_diag_budget, operator.matvecs
    for index, (name, param) in enumerate(zip(probe.names, probe.params)):
        start, stop = offset, offset + param.numel()
        offset = stop
        size = stop - start
        if size < 2 or not chosen_tensor(name, cfg.r_med_tensors):
            continue
        is_weight[name] = param.ndim >= 2
        small = size <= min(cfg.exact_diag_max_numel, budget)
        if small:
            budget -= size
        if method is RMedMethod.exact or small:
            matmat, dim, first = tensor_block(operator, index, start)
            exact = curvature.exact_diagonal_slice(matmat, dim, first, first + size, device, dtype, cfg.max_columns)
            diagonals[name] = TensorDiagonal(exact, exact=True)
            if small and method is RMedMethod.hutchinson:  # the shared probes' error costs nothing more
                estimate = tensor_hutchinson(operator, cfg, hutch, index, start, stop, weights)
                scale = float(torch.linalg.vector_norm(exact))
                if scale > 0:
                    errors.append(float(torch.linalg.vector_norm(estimate.diagonal - exact)) / scale)
        elif method is RMedMethod.subset:
            coordinates = curvature.subset_indices(size, cfg.r_med_subset_size, cfg.seed, index)
            matmat, dim, first = tensor_block(operator, index, start)
            entries = curvature.exact_diagonal_entries(matmat, dim, coordinates + first, device, dtype, cfg.max_columns)
            diagonals[name] = TensorDiagonal(entries, exact=coordinates.numel() == size)
        else:
            diagonals[name] = tensor_hutchinson(operator, cfg, hutch, index, start, stop, weights)

    values: dict[str, float] = {}
    for name, found in diagonals.items():
        value = curvature.r_med(found.diagonal)
        values[name] = value.value
        out[f"geom/r_med/{name}"] = value.value
        out[f"geom/r_med_neg_frac/{name}"] = value.negative_fraction
        if found.replicates is not None:
            low, high = curvature.basic_bootstrap_interval(value.value, found.replicates, cfg.r_med_confidence)
            out[f"geom/r_med_lo/{name}"], out[f"geom/r_med_hi/{name}"] = low, high
    summarised = [name for name in values if is_weight[name]] or list(values)
    finite = [name for name in summarised if math.isfinite(values[name])]
    if finite:
        out["geom/r_med"] = float(curvature.median(torch.tensor([values[n] for n in finite], dtype=torch.float64)))
        if weights is not None:
            # The summary's interval: the median over tensors of each joint resample.
            replicates = torch.stack(
                [
                    diagonals[n].replicates
                    if diagonals[n].replicates is not None
                    else torch.full((weights.shape[1],), values[n], dtype=torch.float64, device=device)
                    for n in finite
                ]
            )
            medians = replicates.sort(dim=0).values
            k = medians.shape[0]
            summary_replicates = (medians[(k - 1) // 2] + medians[k // 2]) / 2
            low, high = curvature.basic_bootstrap_interval(out["geom/r_med"], summary_replicates, cfg.r_med_confidence)
            out["geom/r_med_lo"], out["geom/r_med_hi"] = low, high
    if estimated:
        out["geom/r_med_probes"] = float(cfg.hutchinson_probes)
    if method is RMedMethod.subset:
        out["geom/r_med_subset_size"] = float(cfg.r_med_subset_size)
    # Products spent on R_med, the shared probes included (the Hessian trace reuses them).
    shared = hutch.probes if method is RMedMethod.hutchinson and hutch is not None else 0
    out["geom/r_med_hvp_count"] = float(operator.matvecs - products_before + shared)
    if errors:
        out["geom/r_med_diag_error"] = max(errors)
    return out


def tensor_block(operator: HessianOperator, index: int, start: int) -> tuple[curvature.MatMat, int, int]:
    """Where the exact diagonal entries of parameter ``index`` (flat offset ``start``) are read:
    ``(matmat, dim, first)``, entry k of the tensor being coordinate ``first + k`` of ``matmat``'s
    ``dim``-dimensional operator. Autodiff: the tensor's own Hessian block (:class:`TensorHessian`,
    the same numbers at a fraction of the cost: docs/rmed.md); finite differences: the full operator."""
    if operator.backend == "autodiff":
        block = TensorHessian(operator, index)
        return block.matmat, block.dim, 0
    return operator.matmat, operator.dim, start


def chosen_tensor(name: str, patterns: list[str]) -> bool:
    """Whether ``metrics.r_med_tensors`` (glob patterns; [] = every tensor) selects this parameter."""
    return not patterns or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def tensor_hutchinson(
    operator: HessianOperator,
    cfg: MetricsConfig,
    hutch: curvature.HutchinsonResult | None,
    index: int,
    start: int,
    stop: int,
    weights: Tensor | None,
) -> TensorDiagonal:
    """The Hutchinson diagonal of the tensor at ``start:stop``: a slice of the shared probes'
    (``hutchinson``) or from its own probes (``hutchinson_per_tensor``, seeded by tensor index)."""
    device, dtype = operator.probe.params[0].device, operator.probe.params[0].dtype
    groups = weights.shape[0] if weights is not None else 0
    if cfg.r_med_method is RMedMethod.hutchinson_per_tensor:
        # The probes are zero outside the tensor, so only its own Hessian block is needed: the same
        # products (the same seeded probes over its entries) at TensorHessian's cost under autodiff.
        matmat, block_dim, first = tensor_block(operator, index, start)
        own = curvature.hutchinson(
            matmat,
            block_dim,
            device,
            dtype,
            cfg.hutchinson_probes,
            cfg.seed * 1_000_003 + index + 1,
            cfg.max_columns,
            groups,
            support=(first, first + stop - start),
        )
        diagonal, group_diagonals = own.diagonal, own.group_diagonals
    else:
        assert hutch is not None, "the shared Hutchinson probes are computed before R_med"
        diagonal = hutch.diagonal[start:stop]
        group_diagonals = hutch.group_diagonals[start:stop] if hutch.group_diagonals is not None else None
    replicates = None
    if weights is not None and group_diagonals is not None:
        replicates = curvature.bootstrap_r_med(group_diagonals, weights)
    return TensorDiagonal(diagonal, replicates)


class GeometryProbe:
    """What the training loop holds: config, fixed probe batch, schedule and reusable state.

    if geometry.due(step + 1): geometry.remember_weights()   # before the optimizer step
    ...
    if geometry.due(step): logger.log(geometry.compute(step), step)
    """

    def __init__(
        self,
        cfg: MetricsConfig,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        probe_batch: tuple[Tensor, Tensor],
        max_steps: int,
    ) -> None:
        self.cfg, self.model, self.loss_fn, self.optimizer = cfg, model, loss_fn, optimizer
        x, y = probe_batch
        self.batch = (x[: cfg.probe_size], y[: cfg.probe_size])
        self.schedule = MetricsSchedule(cfg.every, max_steps, cfg.schedule, cfg.per_decade)
        self.state = ProbeState()
        # Wall time of each pass: kept out of the logged metrics (timing is not a property of the run).
        self.seconds: list[float] = []
        self._before: list[Tensor] | None = None
        self._wants_before = "update_ratio" in cfg.metrics()
        late = [step for step in cfg.r_med_at_steps if step > max_steps]
        require(
            not late, "metrics.r_med_at_steps", cfg.r_med_at_steps, f"steps in [1, {max_steps}] (trainer's last step)"
        )
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        require(
            any(chosen_tensor(name, cfg.r_med_tensors) for name in names),
            "metrics.r_med_tensors",
            cfg.r_med_tensors,
            f"glob patterns matching parameter names, e.g. {names[:3]}",
        )
        if "r_med" in cfg.metrics() and cfg.r_med_method is RMedMethod.exact:
            products = sum(
                p.numel()
                for n, p in model.named_parameters()
                if p.requires_grad and chosen_tensor(n, cfg.r_med_tensors)
            )
            if products > EXACT_PRODUCTS_WARNING:
                warnings.warn(
                    f"metrics.r_med_method=exact costs {products:,} Hessian-vector products per R_med pass; "
                    "bound it with metrics.r_med_at_steps and metrics.r_med_tensors (docs/rmed.md)",
                    stacklevel=2,
                )
        hutchinson_r_med = cfg.r_med_method in (RMedMethod.hutchinson, RMedMethod.hutchinson_per_tensor)
        if "r_med" in cfg.metrics() and hutchinson_r_med and cfg.hutchinson_probes < 100:
            warnings.warn(
                f"metrics.hutchinson_probes={cfg.hutchinson_probes}: R_med from fewer than 100 probes is "
                "dominated by probe noise (docs/rmed.md); see geom/r_med_lo and geom/r_med_hi",
                stacklevel=2,
            )

    def due(self, step: int) -> bool:
        return self.schedule.due(step) or step in self.cfg.r_med_at_steps

    def remember_weights(self, weights: list[Tensor] | None = None) -> None:
        """Copy the weights before a metrics step's update (only then: normal steps pay nothing).
        ``weights``: already-copied weights in the order of the model's trainable parameters (a
        population's member, whose weights the model holds only while it is measured)."""
        if self._wants_before:
            own = weights is None
            self._before = [p.detach().clone() for p in self.model.parameters() if p.requires_grad] if own else weights

    def compute(self, step: int) -> dict[str, float]:
        before, self._before = self._before, None
        started = time.perf_counter()
        out = compute_metrics(self.model, self.loss_fn, self.batch, self.optimizer, self.cfg, step, before, self.state)
        self.seconds.append(time.perf_counter() - started)
        return out
