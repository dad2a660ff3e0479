"""Typed schemas for the config groups that are not registries (trainer, logger, metrics, paths)
and for the root config, stored in Hydra's ConfigStore.

Types are checked by OmegaConf when Hydra composes the config (``trainer.max_steps=abc`` fails
there); value ranges are checked by each dataclass's ``check()`` at start-up, before anything is
written, and reported as one line naming the key (see :mod:`memexp.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from memexp.errors import ConfigValueError, require


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class LRSchedule(Enum):
    constant = "constant"
    cosine = "cosine"


class Resume(Enum):
    auto = "auto"  # continue from the run dir's latest readable checkpoint, if there is one
    never = "never"  # always start from step 0


class Size(Enum):
    tiny = "tiny"  # CPU-sized: minutes on 2 cores
    small = "small"  # one GPU, minutes


class Progress(Enum):
    auto = "auto"  # rich bar on a terminal, plain lines otherwise
    rich = "rich"
    plain = "plain"
    off = "off"


# The twin's Hessian-vector product (trainer.twin_hvp): memexp.optim.closure_hvp.HVP_METHODS, spelled
# out here so that the config schemas do not import torch (tests/test_twin.py checks they agree).
TWIN_HVP_METHODS = ("forward", "central", "double_backward")


@dataclass
class TrainerConfig:
    max_steps: int = 500
    epochs: int | None = None  # when set, overrides max_steps with epochs * steps per epoch
    batch_size: int = 64
    eval_every: int = 100  # 0: evaluate only at the end
    eval_batch_size: int = 1024
    eval_examples: int = 0  # 0: the whole held-out set; else cap both eval sets at this size
    log_every: int = 10
    checkpoint_every: int = 0  # 0: checkpoint only at the end
    keep_checkpoints: int = 3
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    devices: int = 1  # data-parallel processes on this node (torchrun; one GPU each on CUDA)
    precision: Precision = Precision.fp32
    compile: bool = False
    lr_schedule: LRSchedule = LRSchedule.constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr
    grad_clip: float = 0.0  # max global grad norm; 0 disables clipping
    progress: Progress = Progress.auto
    resume: Resume = Resume.auto
    # The memoryless-corrected twin of the optimizer trains alongside (memexp/twin.py): twin/* metrics.
    twin: bool = False
    twin_uncorrected: bool = False  # also the plain memoryless copy (correction off): twin/*_uncorrected
    # The corrected twin's H·v (its optimizer's hvp=): forward (finite difference, the default),
    # central, or double_backward (exact; on ReLU networks the finite differences are not, docs/optimizers.md).
    twin_hvp: str = "forward"

    def check(self) -> None:
        require(self.max_steps > 0, "max_steps", self.max_steps, "an integer > 0")
        require(self.epochs is None or self.epochs > 0, "epochs", self.epochs, "null or an integer > 0")
        require(self.batch_size > 0, "batch_size", self.batch_size, "an integer > 0")
        require(self.eval_every >= 0, "eval_every", self.eval_every, "an integer >= 0 (0: only at the end)")
        require(self.eval_batch_size > 0, "eval_batch_size", self.eval_batch_size, "an integer > 0")
        require(self.eval_examples >= 0, "eval_examples", self.eval_examples, "an integer >= 0 (0: all)")
        require(self.log_every > 0, "log_every", self.log_every, "an integer > 0")
        require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "an integer >= 0")
        require(self.keep_checkpoints > 0, "keep_checkpoints", self.keep_checkpoints, "an integer > 0")
        require(
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
            "device",
            self.device,
            "one of auto, cpu, cuda, cuda:N, mps",
        )
        require(self.devices >= 1, "devices", self.devices, "an integer >= 1")
        require(
            self.batch_size % self.devices == 0,
            "batch_size",
            self.batch_size,
            f"a multiple of trainer.devices ({self.devices})",
        )
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "an integer >= 0")
        require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")
        require(self.grad_clip >= 0.0, "grad_clip", self.grad_clip, "a number >= 0 (0 disables clipping)")
        require(not self.twin or self.devices == 1, "twin", self.twin, "true only with trainer.devices=1")
        require(self.twin or not self.twin_uncorrected, "twin_uncorrected", True, "true only with trainer.twin=true")
        require(self.twin_hvp in TWIN_HVP_METHODS, "twin_hvp", self.twin_hvp, f"one of {', '.join(TWIN_HVP_METHODS)}")


WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class WandbConfig:
    # Offline unless the environment says otherwise: runs land in the run dir; `wandb sync` later.
    mode: str = "${oc.env:WANDB_MODE,offline}"
    project: str = "memexp"
    entity: str | None = None
    name: str | None = None  # default: the override string (multirun) or the run dir's name
    group: str | None = None  # default: the sweep's name in a multirun
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    notes: str | None = None
    # Online only: seconds to wait for W&B's servers before falling back to an offline W&B run in the
    # run dir (`wandb sync` uploads it later); compute nodes often have no network.
    init_timeout: float = 20.0

    def check(self) -> None:
        require(self.mode in WANDB_MODES, "mode", self.mode, f"one of {', '.join(WANDB_MODES)}")
        require(bool(self.project), "project", self.project, "a non-empty string")
        require(self.init_timeout > 0, "init_timeout", self.init_timeout, "a number of seconds > 0")


@dataclass
class LoggerConfig:
    # The local log (metrics.jsonl, summary.json) is always on; this group configures W&B.
    wandb: WandbConfig | None = None

    def check(self) -> None:
        if self.wandb is not None:
            try:
                self.wandb.check()
            except ConfigValueError as error:
                raise error.with_prefix("wandb") from None


class MetricsTier(Enum):
    """Cost tiers, each a superset of the one before (like cockpit's)."""

    economy = "economy"  # one probe-set gradient plus optimizer-state reads: cheap enough for every eval
    business = "business"  # + curvature from a few dozen Hessian-vector products
    full = "full"  # + R_med per tensor (r_med_method; exact diagonals of small tensors)


class TrackSchedule(Enum):
    linear = "linear"  # every `every` steps
    log = "log"  # `per_decade` log-spaced steps per factor of 10 early on, never sparser than `every`


class EigenMethod(Enum):
    lanczos = "lanczos"
    power = "power"


class HvpBackend(Enum):
    auto = "auto"  # autodiff when the model supports it, else finite differences
    autodiff = "autodiff"  # curvlinops (forward-over-reverse through torch.func), exact
    finite_difference = "finite_difference"  # central differences of gradients: any model


class RMedMethod(Enum):
    """How R_med's Hessian diagonal is obtained (docs/rmed.md has the cost / error table)."""

    exact = "exact"  # every entry from a unit-vector Hessian-vector product: one product per parameter
    subset = "subset"  # exact entries at r_med_subset_size fixed random coordinates per tensor
    hutchinson = "hutchinson"  # Rademacher probes over all parameters, shared with the Hessian trace
    hutchinson_per_tensor = "hutchinson_per_tensor"  # probes supported on one tensor at a time


METRIC_TIERS: dict[str, tuple[str, ...]] = {
    "economy": ("grad_norms", "correction", "weight_norm", "update_ratio", "lion_constraint", "am_beta"),
    "business": ("sharpness", "sharpness_precond", "hessian_trace", "correction_ratio"),
    "full": ("r_med",),
}
METRIC_NAMES: tuple[str, ...] = tuple(name for names in METRIC_TIERS.values() for name in names)


@dataclass
class MetricsConfig:
    """Implicit-regularization and local-geometry metrics (memexp.metrics), logged as ``geom/*``.

    All are computed on a fixed probe set (the first ``probe_size`` examples of the fixed training
    subset the gap is measured on), the model in eval mode, in fp32."""

    every: int = 0  # cadence in steps; 0: no metrics at all (the final step is always included)
    schedule: TrackSchedule = TrackSchedule.linear
    per_decade: int = 10  # log schedule: points per factor of 10 in the step count
    tier: MetricsTier = MetricsTier.economy
    include: list[str] = field(default_factory=list)  # metrics added to the tier's
    exclude: list[str] = field(default_factory=list)  # metrics removed from the tier's
    probe_size: int = 256  # examples in the probe set (capped at the training subset's size)
    probe_chunk: int = 0  # examples per forward pass over the probe set; 0: all at once
    hutchinson_probes: int = 100  # Rademacher probes for the Hessian trace and diagonal (R_med)
    max_columns: int = 16  # Hessian-vector products evaluated together (memory grows with it)
    sharpness_method: EigenMethod = EigenMethod.lanczos
    sharpness_iters: int = 20  # product budget of the top-eigenvalue solver
    sharpness_tol: float = 1e-3  # relative residual at which it stops early
    # R_med per tensor (docs/rmed.md). The median over weight tensors (geom/r_med) is memexp's summary.
    # exact: the only estimator within 10% on the tiny GPT (docs/rmed.md); bound its cost with
    # r_med_at_steps and r_med_tensors.
    r_med_method: RMedMethod = RMedMethod.exact
    r_med_at_steps: list[int] = field(default_factory=list)  # R_med only at these steps ([]: every metrics pass)
    r_med_tensors: list[str] = field(default_factory=list)  # glob patterns of parameter names ([]: all tensors)
    r_med_subset_size: int = 128  # subset: coordinates per tensor (all of a smaller tensor)
    r_med_bootstrap: int = 200  # hutchinson*: bootstrap resamples for the interval (0: none)
    r_med_bootstrap_groups: int = 20  # ... over this many groups of probes (memory: one diagonal per group)
    r_med_confidence: float = 0.9  # ... the interval's level (geom/r_med_lo, geom/r_med_hi)
    exact_diag_max_numel: int = 32  # tensors this small get their exact Hessian diagonal for R_med,
    exact_diag_budget: int = 64  # ... in model order while the products this costs stay within this budget
    hvp: HvpBackend = HvpBackend.auto
    fd_step: float = 1e-3  # finite-difference step in parameter space (central differences)
    seed: int = 0  # probe vectors and the eigen-solver's start vector (same for every run)
    check_deterministic: bool = True  # probe once that the probe loss is deterministic

    def metrics(self) -> list[str]:
        """The metric names this config computes, in a fixed order."""
        tiers = list(METRIC_TIERS)
        chosen = {name for tier in tiers[: tiers.index(self.tier.value) + 1] for name in METRIC_TIERS[tier]}
        chosen = (chosen | set(self.include)) - set(self.exclude)
        return [name for name in METRIC_NAMES if name in chosen]

    def check(self) -> None:
        require(self.every >= 0, "every", self.every, "an integer >= 0 (0: never)")
        require(self.per_decade > 0, "per_decade", self.per_decade, "an integer > 0")
        for key, names in (("include", self.include), ("exclude", self.exclude)):
            for name in names:
                require(name in METRIC_NAMES, key, name, f"names from {', '.join(METRIC_NAMES)}")
        require(self.probe_size > 0, "probe_size", self.probe_size, "an integer > 0")
        require(self.probe_chunk >= 0, "probe_chunk", self.probe_chunk, "an integer >= 0 (0: the whole probe set)")
        require(
            self.hutchinson_probes >= 2,
            "hutchinson_probes",
            self.hutchinson_probes,
            "an integer >= 2 (>= 100 for R_med, per the spec)",
        )
        require(self.max_columns > 0, "max_columns", self.max_columns, "an integer > 0")
        require(self.sharpness_iters > 0, "sharpness_iters", self.sharpness_iters, "an integer > 0")
        require(self.sharpness_tol > 0, "sharpness_tol", self.sharpness_tol, "a number > 0")
        require(all(step >= 1 for step in self.r_med_at_steps), "r_med_at_steps", self.r_med_at_steps, "steps >= 1")
        require(
            not self.r_med_at_steps or ("r_med" in self.metrics() and self.every > 0),
            "r_med_at_steps",
            self.r_med_at_steps,
            "[] unless R_med is computed (tier=full or include=[r_med]) and metrics.every > 0",
        )
        require(self.r_med_subset_size >= 2, "r_med_subset_size", self.r_med_subset_size, "an integer >= 2")
        require(self.r_med_bootstrap >= 0, "r_med_bootstrap", self.r_med_bootstrap, "an integer >= 0 (0: no interval)")
        require(
            self.r_med_bootstrap_groups >= 2, "r_med_bootstrap_groups", self.r_med_bootstrap_groups, "an integer >= 2"
        )
        require(0 < self.r_med_confidence < 1, "r_med_confidence", self.r_med_confidence, "a number in (0, 1)")
        require(self.exact_diag_max_numel >= 0, "exact_diag_max_numel", self.exact_diag_max_numel, "an integer >= 0")
        require(self.exact_diag_budget >= 0, "exact_diag_budget", self.exact_diag_budget, "an integer >= 0")
        require(self.fd_step > 0, "fd_step", self.fd_step, "a number > 0")


@dataclass
class PathsConfig:
    output_root: str = "outputs"
    data_root: str = "${oc.env:MEMEXP_DATA,'~/.cache/memexp'}"


class TuneSearch(Enum):
    grid = "grid"  # every combination of the swept values
    random = "random"  # tune.trials quasi-random (Halton) points within the swept values' range


class TuneObjective(Enum):
    final = "final"  # the metric at the end of training
    best = "best"  # the best value logged during training
    steps_to_target = "steps_to_target"  # the (interpolated) step where the metric first reaches tune.target


class TuneMode(Enum):
    min = "min"
    max = "max"


@dataclass
class TuneConfig:
    """`memexp tune`: search per arm on the validation split, then confirm the chosen setting on
    fresh seeds (memexp/tune.py). Read only by the tune sweeper, never by a training job."""

    params: list[str] = field(default_factory=lambda: ["optimizer.lr", "optimizer.weight_decay"])
    seeds: int = 2  # tuning seeds per trial
    confirm_seeds: int = 10  # fresh seeds for each arm's chosen setting (disjoint from the tuning seeds)
    seed_base: int = 0  # tuning seeds are seed_base, seed_base+1, ...; confirmation seeds follow them
    objective: TuneObjective = TuneObjective.final
    metric: str = "val/loss"  # a validation metric: selection never reads test/*
    mode: TuneMode = TuneMode.min
    target: float | None = None  # objective=steps_to_target: the value the metric must reach
    search: TuneSearch = TuneSearch.grid
    trials: int = 16  # search=random: trials per arm (every arm gets the same number)
    search_seed: int = 0  # search=random: the quasi-random sequence's shift
    extend_edges: bool = False  # grid: a chosen value on the grid's edge adds one point beyond it
    max_extensions: int = 2  # ... at most this many times per arm
    # Per-arm search spaces: {"optimizer=lion": {"optimizer.lr": [3e-5, 1e-4, 3e-4]}}; the command
    # line's swept values of a tuned key take precedence for every arm.
    spaces: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        require(len(self.params) > 0, "params", self.params, "a non-empty list of config keys")
        require(self.seeds >= 1, "seeds", self.seeds, "an integer >= 1")
        require(self.confirm_seeds >= 1, "confirm_seeds", self.confirm_seeds, "an integer >= 1 (>= 10 for a claim)")
        require(self.seed_base >= 0, "seed_base", self.seed_base, "an integer >= 0")
        require(
            self.metric.startswith("val/"),
            "metric",
            self.metric,
            "a validation metric (val/...): selection must never read the test split",
        )
        require(
            self.objective is not TuneObjective.steps_to_target or self.target is not None,
            "target",
            self.target,
            "a number when tune.objective=steps_to_target",
        )
        require(self.trials >= 1, "trials", self.trials, "an integer >= 1")
        require(self.max_extensions >= 0, "max_extensions", self.max_extensions, "an integer >= 0")


@dataclass
class TrainConfig:
    task_name: str = "train"
    seed: int = 0
    optimizer: Any = MISSING
    model: Any = MISSING
    data: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    experiment: Any = None  # name of the preset in use, set by the preset itself
    # Experiment presets size themselves with ${by_size:<tiny value>,<small value>}.
    size: Size = Size.small


def by_size(tiny: Any, small: Any, *, _root_: Any) -> Any:
    """``${by_size:200,5000}``: the value for the run's ``size`` (``size=tiny`` on a CPU)."""
    size = _root_.get("size", Size.small)
    return tiny if (size.value if isinstance(size, Size) else str(size)) == "tiny" else small


def register_configs() -> None:
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("by_size"):
        OmegaConf.register_new_resolver("by_size", by_size)
    register_plugins()


def register_plugins() -> None:
    """memexp's Hydra plugins, registered by hand: Hydra finds plugins by walking the
    ``hydra_plugins`` namespace package with pkgutil, which cannot see into an editable install
    (``pip install -e .`` maps packages through an import hook), so the scan alone would miss them."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.memexp_batched_launcher.batched_launcher import BatchedLauncher
    from hydra_plugins.memexp_sweeper import MemexpBasicSweeper
    from hydra_plugins.memexp_tune import TuneSweeper

    for plugin in (TuneSweeper, BatchedLauncher, MemexpBasicSweeper):
        Plugins.instance().register(plugin)
