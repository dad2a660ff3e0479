"""`trainer.twin=true`: the run's memoryless-corrected twin, trained in lockstep (docs/optimizers.md).

The twin of an optimizer with memory (sgd → sgd_memoryless, adamw → adamw_memoryless, lion →
lion_memoryless) replaces the memory by the current iterate and adds the correction h·M(θ); over a
fixed time horizon it stays O(h²) from the original, O(h) without the correction (docs/results.md,
section 1). Here it runs next to a real training run: a copy of the model with the SAME initial
weights takes one twin step after every step of the run, on the SAME mini-batch, with the SAME
random numbers (dropout masks), at the SAME learning rate (copied from the run's param groups, so
the schedule is the run's own). The run's own trajectory is unchanged: the random number
generators are put back to where the run's step left them.

Logged at each log step: ``twin/distance`` = ‖θ − θ̃‖ over the trained parameters,
``twin/rel_distance`` = that over ‖θ‖, ``twin/loss`` (the twin's mean mini-batch loss over the log
window, like ``train/batch_loss``) and ``twin/loss_diff`` = twin/loss − train/batch_loss. With
``trainer.twin_uncorrected=true`` a third copy runs the plain memoryless optimizer
(``correction=false``) and adds ``twin/distance_uncorrected``, ``twin/rel_distance_uncorrected``,
``twin/loss_uncorrected``. A twin whose distance or loss is no longer finite has diverged: it is
not stepped any more and logs nan from then on.

The corrected twin's Hessian-vector product is ``trainer.twin_hvp`` (its optimizer's ``hvp=``):
``forward`` (the default, a finite difference), ``central``, or ``double_backward`` (exact). On ReLU
networks the finite differences cross kinks and are off by 14% or more (docs/optimizers.md).

The twin is exact (``correction_scale=1``): at practical learning rates it may leave the regime
where it tracks the run, or diverge (docs/optimizers.md, "Stable correction_scale"); a growing
distance is then the measurement, not a failure of the run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from memexp.config import TrainerConfig
from memexp.errors import ConfigValueError, MemexpError
from memexp.optim import OPTIMIZERS, param_groups_weight_decay
from memexp.optim.base import training_closure
from memexp.optim.closure_hvp import RNGSnapshot
from memexp.optim.registry import twin_for

# Settings of an original optimizer that its twin's derivation takes for granted (docs/memory_theory.md);
# any other value is refused at start-up. Which optimizer is whose twin is the registry's
# (OptimizerInfo.twin_of), never guessed from a class.
TWIN_ASSUMES: dict[str, dict[str, Any]] = {
    "sgd": {"dampening": 0.0, "nesterov": False},
    "adamw": {"amsgrad": False},
}


# Each twin copy's name in a checkpoint, by its metrics' suffix.
TWIN_STATE_NAMES = {"": "corrected", "_uncorrected": "_uncorrected"}


def check_twin_state(state: dict[str, Any] | None, names: list[str]) -> None:
    """A checkpoint's twin state holds every copy ``names`` this run asks for, or a one-line error."""
    if state is None or not set(names) <= set(state):
        raise MemexpError(
            "the checkpoint has no state for the twins this run asks for (trainer.twin / "
            "trainer.twin_uncorrected were off when it was written): resume with the same settings"
        )


def twin_copies(trainer: TrainerConfig) -> list[tuple[str, bool]]:
    """The twin copies a run trains alongside, as (metrics suffix, correction on): the corrected twin,
    and with ``trainer.twin_uncorrected`` the plain memoryless copy."""
    return [("", True)] + ([("_uncorrected", False)] if trainer.twin_uncorrected else [])


def twin_metrics(
    suffix: str, distance: float, loss: float, norm: float, count: int, batch_loss: float | None, diverged: bool
) -> tuple[dict[str, float], bool]:
    """One twin copy's ``twin/*`` at a log step, and whether it has diverged: a twin whose distance or
    loss is not finite has, and logs nan from then on. ``distance`` = ‖θ − θ̃‖, ``norm`` = ‖θ‖,
    ``loss``: its mean batch loss over the ``count`` steps of the window; ``batch_loss``: the run's
    over the same window (``twin/loss_diff``, the corrected twin's)."""
    diverged = diverged or not (math.isfinite(distance) and math.isfinite(loss))
    if diverged:
        distance = loss = math.nan
    out = {
        f"twin/distance{suffix}": distance,
        f"twin/rel_distance{suffix}": distance / norm if norm > 0 else math.nan,
    }
    if count > 0:
        out[f"twin/loss{suffix}"] = loss
        if batch_loss is not None and suffix == "":
            out["twin/loss_diff"] = loss - batch_loss
    return out, diverged


def twin_config(optimizer_cfg: Any, correction: bool, hvp: str = "forward") -> Any:
    """The twin's config: the original's hyperparameters with the same names (the twins use their
    original's conventions: torch SGD's undampened buffer with lr h and momentum β, AdamW's and Lion's
    betas), the exact correction (scale 1), and ``hvp`` (trainer.twin_hvp) for its H·v."""
    name = optimizer_cfg.name
    twin = twin_for(name)
    if twin is None:
        originals = sorted(e.info.twin_of for e in OPTIMIZERS.entries() if e.info is not None and e.info.twin_of)
        raise ConfigValueError("trainer.twin", True, f"true only with optimizer in {originals} (got {name})")
    for key, expected in TWIN_ASSUMES.get(name, {}).items():
        value = getattr(optimizer_cfg, key)
        if value != expected:
            raise ConfigValueError(
                "trainer.twin", True, f"true only with optimizer.{key}={expected} (the twin of {name} assumes it)"
            )
    twin_class = twin.config
    shared = {f.name for f in dataclasses.fields(twin_class)} & {f.name for f in dataclasses.fields(optimizer_cfg)}
    values = {key: copy.deepcopy(getattr(optimizer_cfg, key)) for key in shared - {"name"}}
    return twin_class(**values, correction=correction, correction_scale=1.0, hvp=hvp)


@dataclass
class TwinCopy:
    """One twin: its model, optimizer and the sum of its mini-batch losses since the last log step."""

    suffix: str  # "" for the corrected twin, "_uncorrected" for the plain memoryless one
    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    loss_sum: Tensor
    # Set at the first log step whose distance or loss is not finite: the twin cannot come back from
    # inf/nan weights, so it is no longer stepped (the run stops paying for it) and logs nan.
    diverged: bool = False


class Twin:
    """The twins of a run. ``step_alongside`` wraps the run's optimizer step; ``metrics`` at log steps."""

    def __init__(
        self,
        optimizer_cfg: Any,
        trainer: TrainerConfig,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        """``model``: the run's model before its first step (the twins copy its weights);
        ``trainer``: ``grad_clip`` and ``compile`` as the run's, ``twin_uncorrected``, ``twin_hvp``."""
        self.loss_fn, self.autocast, self.grad_clip = loss_fn, autocast, trainer.grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.count = 0  # steps since the last log step
        self.copies: list[TwinCopy] = []
        for suffix, correction in twin_copies(trainer):
            cfg = twin_config(optimizer_cfg, correction, trainer.twin_hvp)
            twin_model = copy.deepcopy(model)  # the same initial weights (and buffers)
            groups = param_groups_weight_decay(twin_model, cfg.weight_decay, cfg.no_decay)
            self.copies.append(
                TwinCopy(
                    suffix=suffix,
                    model=twin_model,
                    forward=torch.compile(twin_model) if trainer.compile else twin_model,
                    optimizer=OPTIMIZERS.build(cfg.name, groups, cfg),
                    params=[p for p in twin_model.parameters() if p.requires_grad],
                    loss_sum=torch.zeros((), device=self.params[0].device),
                )
            )

    def step_alongside(
        self, main_step: Callable[[], Tensor], optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
    ) -> Tensor:
        """Run the run's step (``main_step``), then each twin's step on the same batch, replaying the
        random numbers the run's step drew, at the lr the run's step used."""
        before = RNGSnapshot(self.params)
        loss = main_step()
        after = RNGSnapshot(self.params)
        for twin in self.copies:
            if twin.diverged:
                continue
            for twin_group, group in zip(twin.optimizer.param_groups, optimizer.param_groups, strict=True):
                twin_group["lr"] = group["lr"]
            before.restore()
            closure = training_closure(
                twin.optimizer, twin.forward, self.loss_fn, lambda: (x, y), twin.params, self.grad_clip, self.autocast
            )
            twin_loss = twin.optimizer.step(closure)
            assert twin_loss is not None
            twin.loss_sum += twin_loss.detach()
        after.restore()
        self.count += 1
        return loss

    @torch.no_grad()
    def metrics(self, batch_loss: float | None = None) -> dict[str, float]:
        """``twin/*`` now (one host transfer); the loss window restarts. ``batch_loss``: the run's
        ``train/batch_loss`` over the same window, for ``twin/loss_diff``."""
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.params)))
        values: list[Tensor] = [norm]
        for twin in self.copies:
            difference = torch._foreach_sub(self.params, twin.params)
            values.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(difference))))
            values.append(twin.loss_sum / max(self.count, 1))
            twin.loss_sum.zero_()
        host = torch.stack([v.double() for v in values]).tolist()
        out: dict[str, float] = {}
        for index, twin in enumerate(self.copies):
            distance, loss = host[1 + 2 * index], host[2 + 2 * index]
            values, twin.diverged = twin_metrics(
                twin.suffix, distance, loss, host[0], self.count, batch_loss, twin.diverged
            )
            out.update(values)
        self.count = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        """The twins' weights and optimizer states, for the run's checkpoint (resume stays exact)."""
        return {
            TWIN_STATE_NAMES[twin.suffix]: {
                "model": twin.model.state_dict(),
                "optimizer": twin.optimizer.state_dict(),
                "diverged": twin.diverged,
            }
            for twin in self.copies
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        names = [TWIN_STATE_NAMES[twin.suffix] for twin in self.copies]
        check_twin_state(state, names)
        assert state is not None
        for name, twin in zip(names, self.copies):
            twin.model.load_state_dict(state[name]["model"])
            twin.optimizer.load_state_dict(state[name]["optimizer"])
            twin.diverged = bool(state[name]["diverged"])
