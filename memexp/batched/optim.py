"""Optimizers on stacked parameters: one functional step per optimizer for a whole population.

Every parameter tensor has a leading member dimension ``[M, ...]``; every hyperparameter is a
float64 tensor of shape ``[M]`` (one value per member), broadcast against that dimension. The
scalar arithmetic (``1 - lr·λ``, bias corrections, step sizes) is done in float64 and cast to the
parameter's dtype once, as the single-run optimizers do with their Python floats, so a member
follows its single run to rounding. The math of each step is its single-run optimizer's:

- ``sgd``: torch.optim.SGD (memexp/optim/sgd.py), torch convention ``buf = μ·buf + (1−d)·g`` with
  ``buf = g`` on the first step, L2 weight decay added to the gradient, Nesterov's ``g + μ·buf``
  when ``nesterov``;
- ``adamw``: torch.optim.AdamW (memexp/optim/adamw.py), decoupled decay ``x ← x·(1 − η·λ)``, bias
  corrections ``1 − β^t``, ``denom = sqrt(v)/sqrt(1 − β2^t) + ε`` (AMSGrad: the running max of v);
- ``projected_adam``: memexp.optim.projected_adam.ProjectedAdam: AdamW's step without decay, then
  each member's weight-decayed parameters clipped to its box ``|x| ≤ 1/λ`` (no box for λ = 0);
- ``lion``: memexp.optim.lion.Lion (see its docstring): ``c = β1·m + (1−β1)·g``,
  ``x ← x·(1 − η·λ) − η·sign(c)``, ``m ← β2·m + (1−β2)·g``;
- ``lion_k``: memexp.optim.lion_k.LionK: Lion with ∇K(c) for sign(c); the elementwise kernels
  (``l1``, ``softsign`` with a per-member ``delta``, ``quadratic``) by the single run's own
  ``apply_kernel_gradient``, the per-tensor norm kernels (``l2``, ``linf``) per member and tensor
  (:func:`member_kernel_gradient_`);
- ``am_sgd``, ``am_adamw``: memexp.optim.am_sgd.AdaptiveMemorySGD and am_adamw.AdaptiveMemoryAdamW
  with the Taylor offset, each member's β_t from its own sums (memexp/batched/adaptive_memory.py);
- the memoryless twins ``sgd_memoryless``, ``adamw_memoryless``, ``lion_memoryless``: their single
  runs' steps, with one Hessian-vector product per member by finite differences
  (memexp/batched/memoryless.py).

The steps work on blocks: ``[M, n]`` tensors, a row per member. The population passes two, column
blocks of its ``[M, N]`` parameter tensor (memexp/batched/population.py): the parameters the single
run puts in its weight-decayed group (memexp.optim.param_groups) first, ``decayed`` = 1 block, then
the others, which get no decay, as there. The per-member scalars are cast to ``[M, 1]`` once per
step and broadcast over every block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from memexp.batched.adaptive_memory import (
    ADAPTIVE_MEMORY_HYPERPARAMETERS,
    AdaptiveMemorySettings,
    Segments,
    am_adamw_step,
    am_sgd_step,
    column_values,
    segment_sums,
)
from memexp.batched.memoryless import (
    TWIN_HYPERPARAMETERS,
    TWIN_STEPS,
    GradientAt,
    TwinSettings,
    member_corrects,
    member_hessian_vector_products,
    member_norms,
    twin_scalars,
)
from memexp.optim.closure_hvp import HessianVectorProducts
from memexp.optim.lion_k import LionKernel, apply_kernel_gradient

# Per-member hyperparameters of each batched optimizer (the config keys that may differ inside a
# population), and the state buffers it keeps per parameter.
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay"),
    "adamw": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "projected_adam": ("lr", "beta1", "beta2", "eps", "weight_decay"),  # weight_decay: λ of the box
    "lion": ("lr", "beta1", "beta2", "weight_decay"),
    "lion_k": ("lr", "beta1", "beta2", "weight_decay", "delta"),
    **ADAPTIVE_MEMORY_HYPERPARAMETERS,
    **TWIN_HYPERPARAMETERS,
}
# lion_k kernels whose gradient ∇K(c) is elementwise, and those that reduce per tensor.
ELEMENTWISE_LION_KERNELS = ("l1", "softsign", "quadratic")
NORM_LION_KERNELS = ("l2", "linf")
STATE_BUFFERS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum_buffer",),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "projected_adam": ("exp_avg", "exp_avg_sq"),
    "am_sgd": ("direction",),
    "am_adamw": ("direction", "exp_avg_sq"),
    "lion": ("exp_avg",),
    "lion_k": ("exp_avg",),
    **{twin: () for twin in TWIN_STEPS},  # a twin keeps no buffer: its memory is the correction
}


def sgd_step(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor],
    decayed: int,
    h: dict[str, Tensor],
    first_step: bool,
    nesterov: bool = False,
) -> None:
    for index, (param, grad, buffer) in enumerate(zip(params, grads, buffers)):
        if index < decayed:
            grad.addcmul_(h["weight_decay"], param)
        if first_step:
            buffer.copy_(grad)  # torch starts the buffer at the gradient, undamped
        elif "one_minus_dampening" in h:
            buffer.mul_(h["momentum"]).addcmul_(h["one_minus_dampening"], grad)
        else:  # no member dampens: μ·buf + g in one pass, torch's order of operations (mul, then add)
            torch.addcmul(grad, buffer, h["momentum"], out=buffer)
        param.addcmul_(h["neg_lr"], grad.addcmul(buffer, h["momentum"]) if nesterov else buffer)


def adamw_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    decayed: int,
    h: dict[str, Tensor],
    max_exp_avg_sqs: list[Tensor] | None = None,
) -> None:
    """``max_exp_avg_sqs``: AMSGrad's running maxima of v (None: AMSGrad off)."""
    for index, (param, grad, exp_avg, exp_avg_sq) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if index < decayed:
            param.mul_(h["decay_factor"])
        exp_avg.lerp_(grad, h["one_minus_beta1"])
        exp_avg_sq.mul_(h["beta2"]).addcmul_(grad * h["one_minus_beta2"], grad)
        second = exp_avg_sq
        if max_exp_avg_sqs is not None:
            second = torch.maximum(max_exp_avg_sqs[index], exp_avg_sq, out=max_exp_avg_sqs[index])
        denom = second.sqrt().div_(h["bias_correction2_sqrt"]).add_(h["eps"])
        param.addcmul_(h["neg_step_size"], exp_avg.div(denom))


def member_kernel_gradient_(kernel: str, direction: Tensor, sizes: tuple[int, ...]) -> None:
    """A per-tensor norm kernel's ∇K(c) (memexp.optim.lion_k: ``_l2_tensor``, ``_linf_tensor``) per
    member and parameter tensor, in place on a ``[M, n]`` block whose tensors span ``sizes`` columns."""
    if kernel == "l2":  # c/‖c‖, 0 at c = 0
        norms = segment_sums(direction * direction, sizes).sqrt_()
        direction.div_(column_values(norms.clamp_min(torch.finfo(direction.dtype).tiny), sizes))
    else:  # linf: the sign on the argmax coordinates, split evenly between ties; 0 at c = 0
        magnitude = direction.abs()
        largest = column_values(torch.stack([part.amax(dim=1) for part in magnitude.split(list(sizes), 1)], 1), sizes)
        on_argmax = (magnitude == largest) & (largest > 0)
        count = column_values(segment_sums(on_argmax.to(direction.dtype), sizes).clamp_min(1), sizes)
        direction.sign_().mul_(on_argmax).div_(count)


def lion_k_step(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    decayed: int,
    h: dict[str, Tensor],
    kernel: str,
    segments: Segments = (),
) -> None:
    """Lion's and LionK's step, in their order of operations (Lion is kernel l1: sign(c));
    ``segments``: the blocks' tensor sizes, for a per-tensor norm kernel."""
    for index, (param, grad, momentum) in enumerate(zip(params, grads, momenta)):
        direction = torch.lerp(momentum, grad, h["one_minus_beta1"])
        if kernel in NORM_LION_KERNELS:
            if segments[index]:
                member_kernel_gradient_(kernel, direction, segments[index])
        else:
            apply_kernel_gradient(kernel, [direction], h.get("delta", 0.0), foreach=False)  # type: ignore[arg-type]
        if index < decayed:
            param.mul_(h["decay_factor"])
        param.addcmul_(h["neg_lr"], direction)
        momentum.lerp_(grad, h["one_minus_beta2"])


# The optimizers that take AdamW's step (projected_adam without its decay), and whose single runs keep
# a step count in their state.
ADAM_STEPS = ("adamw", "projected_adam")


def constant_scalars(name: str, hyper: dict[str, Tensor]) -> dict[str, Tensor]:
    """The per-member scalars (float64, [M]) that neither the scheduled lr nor the step count moves."""
    if name in TWIN_STEPS:
        return {key: hyper[key] for key in ("weight_decay", "eps") if key in hyper}
    if name in ADAPTIVE_MEMORY_HYPERPARAMETERS:
        scalars = {key: hyper[key] for key in ("weight_decay", "rho", "beta_max", "beta2", "eps") if key in hyper}
        if "beta2" in hyper:
            scalars["one_minus_beta2"] = 1 - hyper["beta2"]
        return scalars
    if name == "sgd":
        scalars = {"weight_decay": hyper["weight_decay"], "momentum": hyper["momentum"]}
        if bool((hyper["dampening"] != 0).any()):
            scalars["one_minus_dampening"] = 1 - hyper["dampening"]
        return scalars
    scalars = {"one_minus_beta1": 1 - hyper["beta1"], "one_minus_beta2": 1 - hyper["beta2"]}
    if name == "lion_k":
        scalars["delta"] = hyper["delta"]
    if name in ADAM_STEPS:
        scalars.update(beta2=hyper["beta2"], eps=hyper["eps"])
    if name == "projected_adam":  # the box's half-width 1/λ (memexp.optim.projected_adam.box_radius), ∞ for λ = 0
        scalars["box_radius"] = torch.where(hyper["weight_decay"] > 0, 1 / hyper["weight_decay"], torch.inf)
    return scalars


# The optimizers whose per-step scalars depend on the lr alone: reused while it stays the same.
LR_ONLY_SCALARS = ("sgd", "lion", "lion_k")


def step_scalars(
    name: str, hyper: dict[str, Tensor], lr: Tensor, step: int, previous_lr: Tensor | None = None
) -> dict[str, Tensor]:
    """This step's per-member scalars in float64 ([M]) that the scheduled lr and the step count move
    (adaptive memory's also the previous step's lr, ``previous_lr``; None on the first step): with
    :func:`constant_scalars`, what the single-run optimizer computes in Python floats."""
    if name in ADAPTIVE_MEMORY_HYPERPARAMETERS:  # η_{t−1}/η, 0 where η = 0
        previous = lr if previous_lr is None else previous_lr
        scalars = {"neg_lr": -lr, "lr_ratio": torch.where(lr > 0, previous / torch.where(lr > 0, lr, 1.0), 0.0)}
        if name == "am_adamw":
            scalars.update(bias_correction2=1 - hyper["beta2"] ** step, decay_factor=1 - lr * hyper["weight_decay"])
        return scalars
    if name == "sgd":
        return {"neg_lr": -lr}
    scalars = {"decay_factor": 1 - lr * hyper["weight_decay"]}
    if name in ("lion", "lion_k"):
        return {**scalars, "neg_lr": -lr}
    return {
        **scalars,
        "bias_correction2_sqrt": (1 - hyper["beta2"] ** step) ** 0.5,
        "neg_step_size": -lr / (1 - hyper["beta1"] ** step),
    }


def clip_grad_norms_(grads: list[Tensor], max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ per member on ``[M, n]`` gradient blocks: each member's
    gradient is scaled by ``min(1, max_norm / (‖g_member‖ + 1e-6))``. Returns the norms before
    clipping, [M]."""
    total = member_norms(grads)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0).unsqueeze(1)
    for grad in grads:
        grad.mul_(scale)
    return total


@dataclass(frozen=True)
class OptimizerOptions:
    """The optimizer settings a population shares (config keys that are not batched: jobs that differ
    in them train in populations of their own), and the population's layout."""

    kernel: str | None = None  # lion_k's
    nesterov: bool = False  # sgd's
    amsgrad: bool = False  # adamw's
    twin: TwinSettings = field(default_factory=TwinSettings)  # a memoryless twin's
    adaptive_memory: AdaptiveMemorySettings = field(default_factory=AdaptiveMemorySettings)
    segments: Segments = ()  # the sizes of the parameter tensors in each column block (per-tensor sums)

    @classmethod
    def of(cls, optimizer_cfg: Any, segments: Segments) -> OptimizerOptions:
        """The options of a job's optimizer config (keys it does not have keep their defaults)."""
        kernel = getattr(optimizer_cfg, "kernel", None)
        twin = TwinSettings(
            bool(getattr(optimizer_cfg, "correction", True)),
            str(getattr(optimizer_cfg, "hvp", "forward")),
            getattr(optimizer_cfg, "hvp_radius", None),
        )
        memory = AdaptiveMemorySettings(
            str(getattr(optimizer_cfg, "scope", "global")), bool(getattr(optimizer_cfg, "adaptive", True))
        )
        return cls(
            kernel=None if kernel is None else LionKernel(kernel).value,
            nesterov=bool(getattr(optimizer_cfg, "nesterov", False)),
            amsgrad=bool(getattr(optimizer_cfg, "amsgrad", False)),
            twin=twin,
            adaptive_memory=memory,
            segments=segments,
        )


def member_hyperparameters(optimizer_cfgs: list[Any]) -> dict[str, Tensor]:
    """A batched optimizer's per-member hyperparameters, float64 [M], from the members' optimizer configs."""
    name = optimizer_cfgs[0].name
    return {
        key: torch.tensor([float(getattr(cfg, key)) for cfg in optimizer_cfgs], dtype=torch.float64)
        for key in HYPERPARAMETERS[name]
    }


class BatchedOptimizer:
    """The state and the step of one optimizer for a population whose parameters are the ``[M, n]``
    blocks ``params`` (the first ``decayed`` weight-decayed): ``step(grads, lr)`` updates them in
    place; members listed in ``frozen`` keep their parameters."""

    def __init__(
        self,
        name: str,
        params: list[Tensor],
        decayed: int,
        hyper: dict[str, Tensor],
        options: OptimizerOptions | None = None,
    ) -> None:
        """``options``: the settings the members share (lion_k's kernel, Nesterov, AMSGrad, a twin's,
        adaptive memory's) and the blocks' tensor sizes."""
        if name not in HYPERPARAMETERS:
            raise ValueError(f"no batched optimizer {name!r}")
        self.options = options or OptimizerOptions()
        kernel, segments = self.options.kernel, self.options.segments
        if name == "lion_k" and kernel in NORM_LION_KERNELS and len(segments) != len(params):
            raise ValueError(f"lion_k kernel {kernel!r} reduces per tensor: the options need the blocks' segments")
        self.name, self.params, self.hyper = name, params, hyper
        # Adaptive memory: each member's lr of the previous step (η_{t−1}, float64 [M]), the last step's
        # β_t and (am_adamw) the product of its past β per tensor, the first moment's bias correction.
        self.previous_lr: Tensor | None = None
        self.last_betas: Tensor | None = None
        self.beta_product: Tensor | None = None
        if name == "am_adamw":
            tensors = sum(len(sizes) for sizes in self.options.segments)
            self.beta_product = torch.ones(len(params[0]), tensors, dtype=params[0].dtype, device=params[0].device)
        self.hyper_values = {key: values.tolist() for key, values in hyper.items()}  # the twins' Python floats
        # Whether any member corrects (needs H·v): the single run of one that does not skips the product.
        self.corrects = name in TWIN_STEPS and any(
            member_corrects(name, self.options.twin, scale, momentum)
            for scale, momentum in zip(
                self.hyper_values["correction_scale"], self.hyper_values.get("momentum", [0.0] * len(params[0]))
            )
        )
        # No member decays: skip the decay pass (exact: the single run skips it for λ = 0 too).
        self.decayed = decayed if bool((hyper["weight_decay"] != 0).any()) else 0
        self.steps = 0
        self.buffer_names = STATE_BUFFERS[name] + (("max_exp_avg_sq",) if self.options.amsgrad else ())
        self.state = {buffer: [torch.zeros_like(p) for p in params] for buffer in self.buffer_names}
        self.constants = self._cast(constant_scalars(name, hyper))
        self._scalars: tuple[Tensor, dict[str, Tensor]] | None = None  # (lr, its scalars), see scalars()

    def _cast(self, scalars: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-member float64 scalars [M] in the parameters' dtype, shaped [M, 1] to broadcast."""
        like = self.params[0]
        return {key: value.to(dtype=like.dtype, device=like.device).unsqueeze(1) for key, value in scalars.items()}

    def scalars(self, lr: Tensor) -> dict[str, Tensor]:
        """This step's per-member scalars, cast to the parameters' dtype and shaped [M, 1]: the
        constant ones made once; those of the lr (and AdamW's of the step count) each step, and
        reused while the lr stays the same (a constant schedule). A twin's coefficients move with the
        step count n (its single run's, before this step: 0 on the first)."""
        if self.name in TWIN_STEPS:
            n = self.steps - 1
            scalars = twin_scalars(self.name, self.hyper_values, lr.tolist(), n, self.options.twin)
            return {**self.constants, **self._cast(scalars)}
        if self.name in LR_ONLY_SCALARS and self._scalars is not None and torch.equal(self._scalars[0], lr):
            return self._scalars[1]
        moving = step_scalars(self.name, self.hyper, lr, self.steps, self.previous_lr)
        h = {**self.constants, **self._cast(moving)}
        self._scalars = (lr.clone(), h)
        return h

    @torch.no_grad()
    def step(
        self, grads: list[Tensor], lr: Tensor, frozen: Tensor | None = None, gradient_at: GradientAt | None = None
    ) -> None:
        """One update; ``lr`` is this step's learning rate per member ([M], float64). ``gradient_at``:
        every member's gradients at perturbed weights on this step's batch (a twin's H·v needs it)."""
        self.steps += 1
        params, decayed = self.params, self.decayed
        h = self.scalars(lr)
        kept = [p[frozen].clone() for p in params] if frozen is not None else []
        buffers = [self.state[b] for b in self.buffer_names]
        if self.name in TWIN_STEPS:
            hessian_vector = None
            if self.corrects:
                if gradient_at is None:
                    raise ValueError(f"{self.name}'s step needs gradient_at (its Hessian-vector product)")

                def hessian_vector(vectors: list[Tensor]) -> HessianVectorProducts:
                    return member_hessian_vector_products(params, vectors, grads, gradient_at, self.options.twin)

            TWIN_STEPS[self.name](params, grads, decayed, h, hessian_vector)
        elif self.name == "am_sgd":
            first = self.previous_lr is None
            self.last_betas = am_sgd_step(
                params, grads, buffers[0], decayed, h, first, self.options.adaptive_memory, self.options.segments
            )
            self.previous_lr = lr.clone()
        elif self.name == "am_adamw":
            assert self.beta_product is not None
            first = self.previous_lr is None
            self.last_betas = am_adamw_step(
                params,
                grads,
                buffers[0],
                buffers[1],
                decayed,
                h,
                first,
                self.beta_product,
                self.options.adaptive_memory,
                self.options.segments,
            )
            self.previous_lr = lr.clone()
        elif self.name == "sgd":
            sgd_step(params, grads, buffers[0], decayed, h, self.steps == 1, self.options.nesterov)
        elif self.name == "adamw":
            adamw_step(params, grads, buffers[0], buffers[1], decayed, h, buffers[2] if self.options.amsgrad else None)
        elif self.name == "projected_adam":  # Adam with no decay, then the box (on the decayed block)
            adamw_step(params, grads, buffers[0], buffers[1], 0, h)
            for param in params[:decayed]:
                torch.clamp(param, -h["box_radius"], h["box_radius"], out=param)
        else:  # lion is lion_k with the l1 kernel
            lion_k_step(params, grads, buffers[0], decayed, h, self.options.kernel or "l1", self.options.segments)
        for param, old in zip(params, kept):
            param[frozen] = old

    def member_state(self, index: int) -> dict[str, Any]:
        """Member ``index``'s slice of the state (for its own checkpoint)."""
        state = {"steps": self.steps, "buffers": {b: [t[index].clone() for t in s] for b, s in self.state.items()}}
        if self.previous_lr is not None:
            state["previous_lr"] = float(self.previous_lr[index])
        if self.beta_product is not None:
            state["beta_product"] = self.beta_product[index].clone()
        return state

    def load_member_state(self, index: int, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        if "previous_lr" in state:  # am_sgd
            if self.previous_lr is None:
                self.previous_lr = torch.zeros_like(self.hyper["lr"])
            self.previous_lr[index] = state["previous_lr"]
        if "beta_product" in state and self.beta_product is not None:  # am_adamw
            self.beta_product[index] = state["beta_product"]
        for buffer, tensors in state["buffers"].items():
            for target, tensor in zip(self.state[buffer], tensors):
                target[index].copy_(tensor)
