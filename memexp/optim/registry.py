"""The optimizer registry: each optimizer describes itself once, and one builder makes it from its config.

An optimizer is registered with an :class:`OptimizerInfo` (like timm's ``OptimInfo``): its class, its
config dataclass and what the rest of memexp needs to know about it (memory family, decoupled decay,
state buffers, whether ``step`` needs a closure or a Hessian-vector product, which optimizer it is
the memoryless twin of). Nothing in memexp guesses these from a class or config name: the metrics
read them from ``optimizer.optimizer_info``, which :func:`build_optimizer` sets, or look the class up
here (:func:`describe`), which also covers torch's own SGD and AdamW built by hand.

One source for each fact:
- ranges: the constructor checks them (raising :class:`~memexp.optim.base.OptimizerArgumentError`, a
  ValueError); :meth:`OptimizerConfig.check` builds the optimizer on a one-element tensor and turns
  that error into the one-line ``optimizer.<key>=<value> is not allowed: ...``. torch's own classes
  check less than memexp allows (momentum < 1, dampening <= 1): their entry's ``validate`` does it;
- defaults: the config dataclass; memexp's constructors take theirs from it, option YAMLs hold only
  what differs;
- the builder: :func:`build_optimizer`, by constructor parameter name (``betas`` from the two fields
  named in ``OptimizerInfo.betas``; enums by value).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

import torch

from memexp.errors import ConfigValueError, require
from memexp.optim.base import OptimizerArgumentError
from memexp.optim.memory import MemoryFamily
from memexp.registry import Registry

# Categories of parameters that get no weight decay by default (the nanoGPT / timm convention).
NO_DECAY_CATEGORIES = ("bias", "norm", "embedding", "1d")
# Config fields that are not constructor arguments: the registry name and the param-group split.
CONFIG_ONLY_FIELDS = ("name", "no_decay")


@dataclass
class OptimizerConfig:
    name: str = "?"
    lr: float = 1e-3
    weight_decay: float = 0.0
    # Parameters in these categories get weight_decay=0: "bias", "norm" (norm-layer weights),
    # "embedding" (nn.Embedding weights and whatever the model's no_weight_decay() names),
    # "1d" (every parameter with ndim <= 1).
    no_decay: list[str] = field(default_factory=lambda: ["bias", "norm", "embedding"])

    def check(self) -> None:
        # A run's peak lr (constructors accept 0, as torch's do: a schedule may reach it).
        require(self.lr > 0, "lr", self.lr, "a number > 0")
        for category in self.no_decay:
            require(category in NO_DECAY_CATEGORIES, "no_decay", category, f"items from {NO_DECAY_CATEGORIES}")
        if self.name not in OPTIMIZERS:
            return  # the unknown name is reported by the caller, naming optimizer.name
        info: OptimizerInfo = OPTIMIZERS.get(self.name).info
        try:
            build_optimizer(info, [{"params": [torch.nn.Parameter(torch.zeros(1))]}], self)
        except OptimizerArgumentError as error:
            raise ConfigValueError(info.config_key(error.key), error.value, error.allowed) from None


@dataclass(frozen=True)
class OptimizerInfo:
    """What an optimizer is, declared once at registration."""

    name: str
    optimizer_class: type[torch.optim.Optimizer]
    config: type[OptimizerConfig]
    memory: MemoryFamily
    decoupled_decay: bool  # x <- x(1 - lr wd) - ... (AdamW, Lion); False: wd is added to the gradient
    state_buffers: tuple[str, ...] = ()  # per-parameter state tensors, as in optimizer.state[p]
    needs_closure: bool = False  # step() must be given the closure (it re-evaluates the loss)
    needs_hvp: bool = False  # step() takes a Hessian-vector product through the closure
    twin_of: str | None = None  # the registered optimizer this is the memoryless-corrected twin of
    betas: tuple[str, str] = ("beta1", "beta2")  # the config fields that make the constructor's betas
    # memexp's ranges for an optimizer whose constructor is not memexp's (torch's), called with the
    # constructor arguments before building; raises OptimizerArgumentError.
    validate: Callable[..., None] | None = None

    def config_key(self, argument: str) -> str:
        """The config field of a constructor argument (``betas[0]`` -> ``beta1``)."""
        if argument.startswith("betas[") and argument.endswith("]"):
            return self.betas[int(argument[len("betas[") : -1])]
        return argument


def constructor_arguments(info: OptimizerInfo, cfg: Any) -> dict[str, Any]:
    """The constructor's keyword arguments from a config instance, by name."""
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in CONFIG_ONLY_FIELDS}
    if info.betas[0] in values:
        values["betas"] = (values.pop(info.betas[0]), values.pop(info.betas[1]))
    return {key: value.value if isinstance(value, Enum) else value for key, value in values.items()}


def build_optimizer(info: OptimizerInfo, param_groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
    """The one builder: constructor arguments by name, memexp's ranges checked, the description attached."""
    arguments = constructor_arguments(info, cfg)
    if info.validate is not None:
        info.validate(**arguments)
    optimizer = info.optimizer_class(param_groups, **arguments)
    optimizer.optimizer_info = info  # type: ignore[attr-defined]  (read by describe())
    return optimizer


# A builder takes parameter groups (see memexp.optim.param_groups) and the optimizer's config
# dataclass instance, and returns a torch.optim.Optimizer.
OptimizerBuilder = Callable[[list[dict[str, Any]], Any], Any]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer")


def register_optimizer(info: OptimizerInfo) -> OptimizerInfo:
    """Register ``info`` under its name; every config field must be a constructor argument."""
    accepted = inspect.signature(info.optimizer_class).parameters
    unknown = set(constructor_arguments(info, info.config())) - set(accepted)
    if unknown:
        raise TypeError(f"optimizer {info.name!r}: config fields {sorted(unknown)} are not constructor arguments")

    def build(param_groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
        return build_optimizer(info, param_groups, cfg)

    OPTIMIZERS.register(info.name, config=info.config, info=info)(build)
    return info


def describe(optimizer: torch.optim.Optimizer) -> OptimizerInfo | None:
    """The optimizer's own description: the one the builder attached, else the registered entry of
    exactly its class (torch's SGD/AdamW or memexp's classes built by hand; a twin's class is
    registered once). None for an optimizer memexp does not know."""
    info = getattr(optimizer, "optimizer_info", None)
    if isinstance(info, OptimizerInfo):
        return info
    for entry in OPTIMIZERS.entries():
        if entry.info is not None and entry.info.optimizer_class is type(optimizer):
            return entry.info
    return None


def twin_for(name: str) -> OptimizerInfo | None:
    """The registered memoryless-corrected twin of optimizer ``name`` (``sgd`` -> ``sgd_memoryless``)."""
    for entry in OPTIMIZERS.entries():
        if entry.info is not None and entry.info.twin_of == name:
            return entry.info
    return None
