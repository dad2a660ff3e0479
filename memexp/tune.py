"""`memexp tune`: a fair optimizer comparison from one command.

    memexp tune optimizer=sgd,adamw,lion optimizer.lr=1e-4,3e-4,1e-3,3e-3,1e-2 tune.seeds=2 tune.confirm_seeds=10

The swept keys named in ``tune.params`` (default ``optimizer.lr`` and ``optimizer.weight_decay``)
are *searched*; every other swept key (here ``optimizer``) defines the *arms*. The study then runs,
as the standard of optimizer-comparison benchmarks asks (AlgoPerf's external tuning ruleset, DeepOBS,
Schmidt et al. 2021, Dahl et al. 2023):

1. search: for every arm the same number of trials (a grid, or ``tune.search=random`` quasi-random
   points), each trained with ``tune.seeds`` tuning seeds;
2. selection on the VALIDATION split only (``tune.metric``, a ``val/*`` metric; ``tune.objective``:
   its final value, its best value, or the steps to reach ``tune.target``), averaged over the tuning
   seeds; a trial with a diverged or failed seed scores worst. A chosen value on the edge of its grid
   is flagged; ``tune.extend_edges=true`` adds one point beyond that edge (at most
   ``tune.max_extensions`` times) and selects again;
3. confirmation: each arm's chosen setting re-trained on ``tune.confirm_seeds`` fresh seeds (disjoint
   from the tuning seeds). `memexp report <study dir>` compares these runs, on the test split, at the
   end of equal budgets or at matched training loss (``--at train/loss=X``).

Every run is an ordinary `memexp train` job launched by Hydra's multirun machinery: this module is
the logic of a Hydra *sweeper* (``hydra/sweeper=tune``, plugin in ``hydra_plugins/memexp_tune``), so
the basic, local, Slurm and batched launchers all work, job keys dedupe, and re-running the same
command after a crash finishes the study without repeating finished jobs. The study dir
(``hydra.sweep.dir``) gets ``tune.json`` (machine-readable: trials, scores, chosen values, edge flags,
confirmation run dirs; it holds nothing read from the test split) and ``tune.md`` (a summary with a
plot of score vs each tuned value per arm).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memexp.config import TuneConfig, TuneMode, TuneObjective, TuneSearch
from memexp.errors import ConfigValueError, MemexpError
from memexp.report.runs import format_value
from memexp.rundir import TUNE_JSON

TUNE_MD = "tune.md"
# Wall times of the study's parts (kept out of tune.json, which is deterministic).
TUNE_TIMING = "tune_timing.json"
OUTPUT_REFRESH_S = 5.0  # how often a running study rewrites tune.json/tune.md at most
TUNE_FORMAT = 1
SEED_KEY = "seed"
TASK_NAME_OVERRIDE = "task_name=tune"  # studies live under <output_root>/tune/
# Phases of a study, in the order they run.
SEARCH, EXTENSION, CONFIRMATION = "search", "extension", "confirmation"


# ----------------------------------------------------------------------------------------------
# Values: what a swept value is, how it is typed on the command line, how a grid extends


def parse_number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def typed(text: str) -> Any:
    """``"3e-4"`` -> 0.0003, ``"2"`` -> 2, anything else stays a string."""
    number = parse_number(text)
    if number is None:
        return text
    return int(number) if text.strip().lstrip("+-").isdigit() else number


def beyond_edge(grid: Sequence[float], high: bool) -> float | None:
    """One grid point beyond the grid's low or high edge: geometric (x · ratio of the last two
    points) when every point is positive, else arithmetic; None when that would cross zero (a
    weight-decay grid starting at 0 has nothing below it)."""
    points = sorted(grid)
    if len(points) < 2:
        return None
    edge, neighbour = (points[-1], points[-2]) if high else (points[0], points[1])
    if all(p > 0 for p in points):
        value = edge * (edge / neighbour)
    else:
        value = edge + (edge - neighbour)
        if (value < 0 <= edge) or (value > 0 >= edge):
            return None
    if all(float(p).is_integer() for p in points):
        return float(round(value))
    # 6 significant digits: 3e-4 * 3 is 0.0009, not 0.0008999999999999998 (the value is typed into
    # an override and shown in tune.json).
    return float(f"{value:.6g}")


# ----------------------------------------------------------------------------------------------
# The study plan: arms, their search spaces, the trials and seeds


@dataclass
class Arm:
    overrides: list[str]  # the non-tuned swept keys' values, e.g. ["optimizer=lion"]
    space: dict[str, list[Any]]  # tuned key -> its values for this arm
    space_source: dict[str, str]  # tuned key -> where its values came from

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or "all"


@dataclass
class Trial:
    arm: str
    values: dict[str, Any]
    phase: str  # search or extension
    round: int = 0  # 0 for the search; k for the k-th edge extension


@dataclass
class Job:
    """One training job of the study: its Hydra job number fixes its run dir (sweep dir/num)."""

    num: int
    overrides: list[str]
    arm: str
    seed: int
    phase: str
    trial: int | None  # index into the study's trials (None for confirmation jobs)


def sweep_values(override: Any) -> list[str]:
    """The values of a parsed Hydra override as typed (a sweep's items, or the single value)."""
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            raise MemexpError(
                f"{override.get_key_element()}: memexp tune takes lists of values (a,b,c or range(...)), "
                "not interval sweeps"
            )
        return [str(value) for value in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def space_values(raw: Any, key: str, arm_selector: str) -> list[Any]:
    """A space entry from ``tune.spaces``: a list, or a string in sweep syntax (``1e-4,3e-4``)."""
    if isinstance(raw, list | tuple):
        return [typed(str(v)) if isinstance(v, str) else v for v in raw]
    if isinstance(raw, str):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        (override,) = OverridesParser.create().parse_overrides([f"{key}={raw}"])
        return [typed(v) for v in sweep_values(override)]
    if isinstance(raw, int | float):
        return [raw]
    raise ConfigValueError(f"tune.spaces['{arm_selector}'].{key}", raw, "a list of values or a string like 1e-4,1e-3")


def matching_space(arm_overrides: list[str], spaces: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The most specific ``tune.spaces`` entry whose selector (space-separated overrides) the arm
    satisfies; an ambiguous tie is an error."""
    matches = [
        (selector, space) for selector, space in spaces.items() if set(str(selector).split()) <= set(arm_overrides)
    ]
    if not matches:
        return None
    most = max(len(str(selector).split()) for selector, _ in matches)
    best = [(selector, space) for selector, space in matches if len(str(selector).split()) == most]
    if len(best) > 1:
        raise ConfigValueError(
            "tune.spaces", [s for s, _ in best], f"one entry per arm ({' '.join(arm_overrides)} matches several)"
        )
    return best[0]


def plan_arms(overrides: Sequence[Any], tune: TuneConfig) -> tuple[list[Arm], list[str]]:
    """Split parsed overrides into arms (products of the non-tuned swept keys) with their search
    spaces; returns the arms and the overrides every job shares (the fixed ones)."""
    tuned: dict[str, list[Any]] = {}
    # Keyed by the bare key: a later override of a key replaces an earlier one, as Hydra's command line
    # replaces a preset's sweeper params (``optimizer=lion,adamw`` cuts a preset's optimizer list).
    arm_axes: dict[str, list[str]] = {}
    fixed: dict[str, str] = {}
    for override in overrides:
        key = override.get_key_element()
        bare_key = key.lstrip("+~")
        if bare_key == SEED_KEY:
            raise ConfigValueError(
                SEED_KEY,
                ",".join(sweep_values(override)),
                "set by memexp tune: use tune.seeds (tuning seeds) and tune.confirm_seeds (fresh seeds)",
            )
        values = sweep_values(override)
        arm_axes.pop(bare_key, None)
        fixed.pop(bare_key, None)
        if bare_key in tune.params:
            tuned[bare_key] = [typed(v) for v in values]
        elif override.is_sweep_override():
            arm_axes[bare_key] = [f"{key}={value}" for value in values]
        else:
            fixed[bare_key] = f"{key}={values[0]}"
    arms = []
    for combination in itertools.product(*arm_axes.values()):
        overrides_of_arm = list(combination)
        space: dict[str, list[Any]] = {}
        source: dict[str, str] = {}
        match = matching_space(overrides_of_arm, dict(tune.spaces))
        if match is not None:
            selector, entries = match
            for key, raw in dict(entries).items():
                if key not in tune.params:
                    raise ConfigValueError(
                        f"tune.spaces['{selector}']", key, f"a tuned key (tune.params: {', '.join(tune.params)})"
                    )
                space[key] = space_values(raw, key, selector)
                source[key] = f"tune.spaces['{selector}']"
        for key, values in tuned.items():  # the command line wins over a preset's space
            space[key], source[key] = values, "command line"
        arms.append(Arm(overrides_of_arm, space, source))
    if not any(arm.space for arm in arms):
        raise ConfigValueError(
            "tune.params",
            list(tune.params),
            "keys with values to search: sweep one on the command line (e.g. optimizer.lr=1e-4,1e-3) "
            "or use a preset with tune.spaces",
        )
    return arms, list(fixed.values())


def halton(index: int, base: int) -> float:
    """The ``index``-th (from 1) element of the van der Corput sequence in ``base``."""
    result, fraction = 0.0, 1.0
    while index > 0:
        fraction /= base
        result += fraction * (index % base)
        index //= base
    return result


PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29)


def random_points(space: dict[str, list[Any]], trials: int, seed: int) -> list[dict[str, Any]]:
    """``trials`` quasi-random (Halton, shifted by ``seed``) points within each key's [min, max]:
    log-uniform for positive ranges, uniform otherwise, integers for integer ranges. The same unit
    points serve every arm (only the ranges differ), so arms are searched alike."""
    import random

    keys = sorted(space)
    if len(keys) > len(PRIMES):
        raise ConfigValueError("tune.params", keys, f"at most {len(PRIMES)} keys for tune.search=random")
    shift = random.Random(seed)
    offsets = [shift.random() for _ in keys]
    points = []
    for i in range(1, trials + 1):
        point = {}
        for key, base, offset in zip(keys, PRIMES, offsets):
            numbers = [v for v in space[key] if isinstance(v, int | float) and not isinstance(v, bool)]
            if len(numbers) != len(space[key]):
                raise ConfigValueError(key, space[key], "numbers for tune.search=random (its range is sampled)")
            low, high = min(numbers), max(numbers)
            u = (halton(i, base) + offset) % 1.0
            if low > 0:
                value: float = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
            else:
                value = low + u * (high - low)
            point[key] = int(round(value)) if all(isinstance(v, int) for v in numbers) else float(f"{value:.4g}")
        points.append(point)
    return points


def grid_points(space: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = sorted(space)
    return [dict(zip(keys, combination)) for combination in itertools.product(*(space[k] for k in keys))]


def seeds_of(tune: TuneConfig) -> tuple[list[int], list[int]]:
    """Tuning seeds and the fresh confirmation seeds after them (disjoint by construction)."""
    tuning = list(range(tune.seed_base, tune.seed_base + tune.seeds))
    confirm = list(range(tuning[-1] + 1, tuning[-1] + 1 + tune.confirm_seeds))
    return tuning, confirm


# ----------------------------------------------------------------------------------------------
# Scores: read from the run dirs, validation metrics only


WORST = math.inf  # internal scores are "lower is better"; diverged/failed trials get this


def score_run(run_dir: Path, tune: TuneConfig) -> tuple[float, str]:
    """(score, status) of one finished job from its run dir: the objective on ``tune.metric`` (a
    validation metric), lower is better (negated for mode=max). Anything but a finished run with a
    finite value scores worst."""
    from memexp.report.reading import first_crossing
    from memexp.report.runs import FINISHED, load_run_dir

    record = load_run_dir(run_dir)
    if record.status != FINISHED:
        return WORST, record.status
    sign = 1.0 if tune.mode is TuneMode.min else -1.0
    trace = record.history.get(tune.metric)
    if tune.objective is TuneObjective.final:
        value = record.final.get(tune.metric, math.nan)
        return (sign * value if math.isfinite(value) else WORST), FINISHED
    if trace is None or trace.values.size == 0:
        return WORST, FINISHED
    if tune.objective is TuneObjective.best:
        finite = [v for v in trace.values.tolist() if math.isfinite(v)]
        return (sign * (min(finite) if sign > 0 else max(finite)) if finite else WORST), FINISHED
    assert tune.target is not None
    step = first_crossing(trace, tune.target, decreasing=tune.mode is TuneMode.min)
    return (step if step is not None else WORST), FINISHED


def trial_score(seed_scores: Sequence[float]) -> float:
    """The mean over tuning seeds; one diverged or failed seed makes the trial worst."""
    if not seed_scores or any(not math.isfinite(s) for s in seed_scores):
        return WORST
    return sum(seed_scores) / len(seed_scores)


def shown_score(score: float, tune: TuneConfig) -> float | None:
    """The score in the metric's own units (None for worst)."""
    if not math.isfinite(score):
        return None
    return -score if tune.mode is TuneMode.max and tune.objective is not TuneObjective.steps_to_target else score


# ----------------------------------------------------------------------------------------------
# The study


@dataclass
class Study:
    tune: TuneConfig
    arms: list[Arm]
    fixed: list[str]
    tuning_seeds: list[int]
    confirm_seeds: list[int]
    trials: list[Trial] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)  # job num -> score
    statuses: dict[int, str] = field(default_factory=dict)  # job num -> run status
    run_dirs: dict[int, str] = field(default_factory=dict)  # job num -> run dir (relative to the study dir)
    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: dict[str, dict[str, str]] = field(default_factory=dict)
    extensions: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add_trials(self, arm: Arm, points: list[dict[str, Any]], phase: str, round_: int) -> list[Job]:
        """Register trials and their jobs (numbered after every earlier job)."""
        new_jobs = []
        for values in points:
            self.trials.append(Trial(arm.label, values, phase, round_))
            index = len(self.trials) - 1
            for seed in self.tuning_seeds:
                assignments = [f"{key}={format_value(value)}" for key, value in values.items()]
                job = Job(
                    len(self.jobs),
                    [*arm.overrides, *assignments, *self.fixed, f"{SEED_KEY}={seed}"],
                    arm.label,
                    seed,
                    phase,
                    index,
                )
                self.jobs.append(job)
                new_jobs.append(job)
        return new_jobs

    def search_jobs(self) -> list[Job]:
        jobs = []
        counts = {}
        for arm in self.arms:
            if self.tune.search is TuneSearch.grid:
                points = grid_points(arm.space)
            else:
                points = random_points(arm.space, self.tune.trials, self.tune.search_seed)
            counts[arm.label] = len(points)
            jobs += self.add_trials(arm, points, SEARCH, 0)
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{label}: {n}" for label, n in counts.items())
            raise ConfigValueError(
                "tune.spaces", detail, "the same number of trials for every arm (an equal tuning budget)"
            )
        return jobs

    def trial_scores(self, index: int) -> list[float]:
        return [self.scores.get(job.num, WORST) for job in self.jobs if job.trial == index]

    def select(self, label: str) -> None:
        """Choose the arm's best trial (lowest mean score; ties: the earlier trial) and flag edges."""
        candidates = [(i, t) for i, t in enumerate(self.trials) if t.arm == label]
        scored = [(trial_score(self.trial_scores(i)), i) for i, _ in candidates]
        best_score, best = min(scored, key=lambda item: (item[0], item[1]))
        if not math.isfinite(best_score):
            self.chosen.pop(label, None)
            self.edges[label] = {}
            return
        values = self.trials[best].values
        self.chosen[label] = dict(values)
        self.edges[label] = self.edge_flags(label, values)

    def tried_values(self, label: str, key: str) -> list[Any]:
        return sorted({t.values[key] for t in self.trials if t.arm == label and key in t.values}, key=sort_key)

    def edge_flags(self, label: str, values: dict[str, Any]) -> dict[str, str]:
        """key -> "low"/"high" for a chosen numeric value that is the smallest/largest tried."""
        flags = {}
        for key, value in values.items():
            tried = self.tried_values(label, key)
            if len(tried) < 2 or parse_number(str(value)) is None:
                continue
            if value == tried[0]:
                flags[key] = "low"
            elif value == tried[-1]:
                flags[key] = "high"
        return flags

    def extension_jobs(self, round_: int) -> list[Job]:
        """Grid search with extend_edges: for each arm whose choice sits on an edge, one point beyond
        it (combined with the other keys' values) unless that would cross zero."""
        jobs = []
        for arm in self.arms:
            label = arm.label
            if label not in self.chosen or self.extensions.get(label, 0) >= self.tune.max_extensions:
                continue
            space = {key: self.tried_values(label, key) for key in arm.space}
            points: list[dict[str, Any]] = []
            for key, side in self.edges.get(label, {}).items():
                numbers = [float(v) for v in space[key]]
                new = beyond_edge(numbers, high=side == "high")
                if new is None:
                    self.notes.append(f"{label}: {key} chosen at the {side} edge; not extended (it would cross 0)")
                    continue
                new_value: Any = int(new) if all(isinstance(v, int) for v in space[key]) else new
                others = {k: v for k, v in space.items() if k != key}
                points += [{**p, key: new_value} for p in grid_points({**others, key: [new_value]})]
            if points:
                self.extensions[label] = self.extensions.get(label, 0) + 1
                jobs += self.add_trials(arm, points, EXTENSION, round_)
        return jobs

    def confirmation_jobs(self) -> list[Job]:
        jobs = []
        for arm in self.arms:
            if arm.label not in self.chosen:
                self.notes.append(f"{arm.label}: every trial diverged or failed; nothing to confirm")
                continue
            assignments = [f"{key}={format_value(value)}" for key, value in self.chosen[arm.label].items()]
            for seed in self.confirm_seeds:
                job = Job(
                    len(self.jobs),
                    [*arm.overrides, *assignments, *self.fixed, f"{SEED_KEY}={seed}"],
                    arm.label,
                    seed,
                    CONFIRMATION,
                    None,
                )
                self.jobs.append(job)
                jobs.append(job)
        return jobs

    # -- output ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """tune.json: deterministic (no times), and nothing in it comes from the test split."""
        tune = self.tune
        arms: dict[str, Any] = {}
        for arm in self.arms:
            trials = []
            for index, trial in enumerate(self.trials):
                if trial.arm != arm.label:
                    continue
                jobs = [job for job in self.jobs if job.trial == index]
                score = trial_score([self.scores.get(job.num, WORST) for job in jobs])
                trials.append(
                    {
                        "values": trial.values,
                        "phase": trial.phase,
                        "round": trial.round,
                        "score": shown_score(score, tune),
                        "seeds": [
                            {
                                "seed": job.seed,
                                "score": shown_score(self.scores.get(job.num, WORST), tune),
                                "status": self.statuses.get(job.num, "missing"),
                                "run_dir": self.run_dirs.get(job.num),
                            }
                            for job in jobs
                        ],
                    }
                )
            confirmation = [job for job in self.jobs if job.phase == CONFIRMATION and job.arm == arm.label]
            arms[arm.label] = {
                "overrides": arm.overrides,
                "space": arm.space,
                "space_source": arm.space_source,
                "trials": trials,
                "chosen": self.chosen.get(arm.label),
                "edge": self.edges.get(arm.label, {}),
                "extensions": self.extensions.get(arm.label, 0),
                "confirmation": {
                    "seeds": [job.seed for job in confirmation],
                    "run_dirs": [self.run_dirs.get(job.num) for job in confirmation],
                    "statuses": [self.statuses.get(job.num, "missing") for job in confirmation],
                },
            }
        return {
            "format": TUNE_FORMAT,
            "selection": {
                "metric": tune.metric,
                "objective": tune.objective.value,
                "mode": tune.mode.value,
                "target": tune.target,
                "split": "val",
                "score": "mean over tuning seeds; a diverged or failed seed makes the trial worst (null)",
            },
            "search": tune.search.value,
            "params": list(tune.params),
            "trials_per_arm": self.trials_per_arm(),
            "tuning_seeds": self.tuning_seeds,
            "confirm_seeds": self.confirm_seeds,
            "fixed_overrides": self.fixed,
            "arms": arms,
            "notes": self.notes,
        }

    def trials_per_arm(self) -> dict[str, int]:
        return {arm.label: sum(t.arm == arm.label for t in self.trials) for arm in self.arms}


def sort_key(value: Any) -> tuple[int, Any]:
    number = parse_number(str(value))
    return (0, number) if number is not None else (1, str(value))


def write_outputs(study: Study, study_dir: Path, command: str, plots: bool = True) -> None:
    """tune.json and tune.md (after every batch, so a killed study shows how far it got); the score
    plots only when asked (at the end of each phase: matplotlib costs about a second)."""
    from memexp.rundir import write_text_atomic

    write_text_atomic(study_dir / TUNE_JSON, json.dumps(study.to_json(), indent=2) + "\n")
    if plots:
        files = write_score_plots(study, study_dir)
    else:
        files = sorted(path.name for path in study_dir.glob("tune_*.png"))
    write_text_atomic(study_dir / TUNE_MD, markdown(study, command, files))


def write_score_plots(study: Study, study_dir: Path) -> list[str]:
    """One PNG per tuned key: the trial score (mean over tuning seeds) vs the key's value, one line
    per arm, log x axis for positive values; chosen values circled, worst (diverged) trials as x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    keys = sorted({key for arm in study.arms for key in arm.space})
    for key in keys:
        figure, axes = plt.subplots(figsize=(6, 4), dpi=110)
        positive = True
        finite_scores: list[float] = []
        worst_by_arm: list[tuple[list[float], str]] = []
        for arm in study.arms:
            points = []
            for index, trial in enumerate(study.trials):
                if trial.arm != arm.label or key not in trial.values:
                    continue
                number = parse_number(str(trial.values[key]))
                if number is None:
                    continue
                positive &= number > 0
                points.append((number, shown_score(trial_score(study.trial_scores(index)), study.tune), trial))
            if not points:
                continue
            # Where the arm has other tuned keys, show the best score at each value of this key.
            best: dict[float, float | None] = {}
            for number, score, _ in points:
                if score is not None:
                    finite_scores.append(score)
                current = best.get(number)
                better = score is not None and (current is None or is_better(score, current, study.tune))
                best[number] = score if better else current if number in best else score
            xs = sorted(best)
            line = axes.plot(
                [x for x in xs if best[x] is not None], [best[x] for x in xs if best[x] is not None], "o-"
            )[0]
            line.set_label(arm.label)
            chosen = study.chosen.get(arm.label, {}).get(key)
            if chosen is not None and best.get(float(chosen)) is not None:
                axes.plot([float(chosen)], [best[float(chosen)]], "o", ms=12, mfc="none", color=line.get_color())
            worst_by_arm.append(([x for x in xs if best[x] is None], line.get_color()))
        if positive:
            axes.set_xscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel(f"{study.tune.objective.value} {study.tune.metric} (mean over tuning seeds)")
        axes.set_title(f"search: {study.tune.metric} vs {key} (circled: chosen)")
        if finite_scores and min(finite_scores) > 0 and max(finite_scores) / min(finite_scores) > 20:
            axes.set_yscale("log")
        top = axes.get_ylim()[1]
        for xs_worst, colour in worst_by_arm:  # diverged/failed trials: an x on the top edge
            if xs_worst:
                axes.plot(xs_worst, [top] * len(xs_worst), "x", color=colour, ms=9, clip_on=False)
        axes.legend(fontsize=8)
        name = f"tune_{key.replace('.', '_').replace('/', '_')}.png"
        figure.tight_layout()
        figure.savefig(study_dir / name)
        plt.close(figure)
        files.append(name)
    return files


def is_better(a: float, b: float, tune: TuneConfig) -> bool:
    higher_is_better = tune.mode is TuneMode.max and tune.objective is not TuneObjective.steps_to_target
    return a > b if higher_is_better else a < b


def markdown(study: Study, command: str, plots: Sequence[str]) -> str:
    tune = study.tune
    data = study.to_json()
    lines = [
        "# memexp tune",
        "",
        f"`{command}`",
        "",
        f"Selection: {tune.objective.value} `{tune.metric}` ({tune.mode.value}), validation split only, mean over "
        f"tuning seeds {study.tuning_seeds}; a diverged or failed seed makes a trial worst. Search: "
        f"{tune.search.value}, trials per arm: "
        + ", ".join(f"{label} {n}" for label, n in data["trials_per_arm"].items())
        + f". Confirmation: {len(study.confirm_seeds)} fresh seeds {study.confirm_seeds}.",
        "",
        "Compare the confirmation runs on the test split with `memexp report "
        + "<this dir>` (add `--at train/loss=X` to read them at matched training loss).",
        "",
        "## Chosen settings",
        "",
        "| arm | chosen | score | on an edge | extensions | space |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, arm in data["arms"].items():
        chosen = arm["chosen"]
        best = min(
            (t["score"] for t in arm["trials"] if t["score"] is not None and t["values"] == chosen),
            default=None,
        )
        edge = ", ".join(f"{k} at the {side} edge" for k, side in arm["edge"].items()) or "no"
        space = "; ".join(
            f"{k}: {', '.join(format_value(v) for v in values)} ({arm['space_source'][k]})"
            for k, values in arm["space"].items()
        )
        chosen_text = ", ".join(f"{k}={format_value(v)}" for k, v in chosen.items()) if chosen else "none (all worst)"
        lines.append(
            f"| {label} | {chosen_text} | {fmt(best)} | {'**' + edge + '**' if arm['edge'] else edge} | "
            f"{arm['extensions']} | {space} |"
        )
    if any(arm["edge"] for arm in data["arms"].values()):
        lines += [
            "",
            "A chosen value on the edge of what was tried means the optimum may lie beyond it: widen the grid "
            "(or `tune.extend_edges=true`) before reading the comparison.",
        ]
    for plot in plots:
        lines += ["", f"![{plot}]({plot})"]
    lines += ["", "## Trials", ""]
    for label, arm in data["arms"].items():
        lines += [f"### {label}", "", "| values | phase | score | per seed |", "| --- | --- | --- | --- |"]
        for trial in arm["trials"]:
            values = ", ".join(f"{k}={format_value(v)}" for k, v in trial["values"].items())
            per_seed = ", ".join(f"{s['seed']}: {fmt(s['score'])} ({s['status']})" for s in trial["seeds"])
            lines.append(f"| {values} | {trial['phase']} | {fmt(trial['score'])} | {per_seed} |")
        lines.append("")
    lines += ["## Confirmation runs", ""]
    for label, arm in data["arms"].items():
        runs = arm["confirmation"]
        done = sum(status == "finished" for status in runs["statuses"])
        lines.append(
            f"- {label}: {done}/{len(runs['seeds'])} finished, seeds {runs['seeds']}, run dirs "
            + ", ".join(f"`{d}`" for d in runs["run_dirs"] if d)
        )
    if study.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in study.notes)]
    return "\n".join(lines) + "\n"


def fmt(value: float | None) -> str:
    return "worst (diverged/failed)" if value is None else f"{value:.4g}"


# ----------------------------------------------------------------------------------------------
# Running a study through a Hydra launcher


Launch = Callable[[list[list[str]], int], list[Any]]


def sweep_arguments(params: dict[str, Any], arguments: list[str]) -> list[str]:
    """The overrides a study expands: a preset's ``hydra.sweeper.params`` first (as Hydra's basic
    sweeper takes them), then the command line's. A preset's ``seed`` sweep is dropped: tune sets the
    seeds (tune.seeds, tune.confirm_seeds)."""
    from_preset = []
    for key, value in params.items():
        if str(key) == SEED_KEY:
            print(
                f"memexp tune: the preset's seed={value} is replaced by tune.seeds / tune.confirm_seeds",
                file=sys.stderr,
            )
            continue
        from_preset.append(f"{key}={value}")
    return from_preset + list(arguments)


def run_study(
    config: Any,
    arguments: list[str],
    launch: Launch,
    is_serial: bool,
    validate: Callable[[list[list[str]]], None] | None = None,
) -> Study:
    """Plan, search, select (with edge extensions), confirm. ``launch(batch, first_job_num)`` runs
    override lists as Hydra jobs and returns their JobReturns; ``is_serial`` launchers (the basic
    one) get one job at a time, so the study's progress is reported after each."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    tune: TuneConfig = OmegaConf.to_object(config.tune)  # type: ignore[assignment]
    try:
        tune.check()
    except ConfigValueError as error:
        raise error.with_prefix("tune") from None
    parsed = OverridesParser.create().parse_overrides(arguments)
    arms, fixed = plan_arms(parsed, tune)
    tuning_seeds, confirm_seeds = seeds_of(tune)
    study = Study(tune, arms, fixed, tuning_seeds, confirm_seeds)
    study_dir = Path(str(config.hydra.sweep.dir))
    command = "memexp tune " + " ".join(a for a in arguments if a != TASK_NAME_OVERRIDE)
    progress = StudyProgress(study)
    started, in_jobs, written = time.perf_counter(), 0.0, 0.0

    def run(jobs: list[Job], phase: str) -> None:
        nonlocal in_jobs, written
        if not jobs:
            return
        if validate is not None:
            validate(representative_overrides(jobs))
        chunks = [[job] for job in jobs] if is_serial else [jobs]
        for chunk in chunks:
            launched = time.perf_counter()
            returns = launch([job.overrides for job in chunk], chunk[0].num)
            in_jobs += time.perf_counter() - launched
            for job, job_return in zip(chunk, returns):
                run_dir = job_output_dir(job_return, study_dir, job.num)
                study.run_dirs[job.num] = relative(run_dir, study_dir)
                if job.phase == CONFIRMATION:
                    from memexp.report.runs import load_run_dir

                    study.statuses[job.num] = load_run_dir(run_dir).status
                else:
                    study.scores[job.num], study.statuses[job.num] = score_run(run_dir, tune)
                progress.job_done(job, phase)
            # tune.json/tune.md show a running study's progress; short jobs refresh them at most
            # every few seconds, and the phase's end always does.
            if chunk is chunks[-1] or time.perf_counter() - written > OUTPUT_REFRESH_S:
                write_outputs(study, study_dir, command, plots=False)
                written = time.perf_counter()

    run(study.search_jobs(), SEARCH)
    for arm in arms:
        study.select(arm.label)
    if tune.extend_edges and tune.search is TuneSearch.grid:
        for round_ in range(1, tune.max_extensions + 1):
            jobs = study.extension_jobs(round_)
            if not jobs:
                break
            run(jobs, f"{EXTENSION} {round_}")
            for arm in arms:
                study.select(arm.label)
    elif tune.extend_edges:
        study.notes.append("tune.extend_edges applies to grid search only; random search keeps its range")
    for label, flags in study.edges.items():
        for key, side in flags.items():
            progress.warn(f"{label}: chosen {key}={format_value(study.chosen[label][key])} is on the {side} edge")
    write_outputs(study, study_dir, command)  # the score plots: the search is over
    run(study.confirmation_jobs(), CONFIRMATION)
    write_outputs(study, study_dir, command, plots=False)
    total = time.perf_counter() - started
    timing = {"study_s": total, "jobs_s": in_jobs, "orchestration_s": total - in_jobs, "jobs": len(study.jobs)}
    (study_dir / TUNE_TIMING).write_text(json.dumps(timing, indent=2) + "\n")
    progress.finish(study_dir)
    return study


def representative_overrides(jobs: Sequence[Job]) -> list[list[str]]:
    """The jobs whose composition Hydra checks before launching (as its basic sweeper checks every
    job): the first of each arm and every job that brings a value not seen yet. Jobs differ only in
    their arm, their tuned values and the seed, so a config error shows in one of these; checking all
    composes every config twice, which costs more than a short job."""
    seen: set[str] = set()
    chosen = []
    for job in jobs:
        new = {override for override in job.overrides if not override.startswith(f"{SEED_KEY}=")} - seen
        if new:
            chosen.append(job.overrides)
            seen |= new
    return chosen


def job_output_dir(job_return: Any, study_dir: Path, num: int) -> Path:
    """The job's run dir as Hydra made it (its hydra.runtime.output_dir), else sweep dir/num."""
    try:
        return Path(str(job_return.hydra_cfg.hydra.runtime.output_dir))
    except AttributeError:
        return study_dir / str(num)


def relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


class StudyProgress:
    """The study's progress on stderr: trials done / total and the current best per arm, one line
    per finished job (jobs draw their own progress bars in between)."""

    def __init__(self, study: Study) -> None:
        from rich.console import Console

        self.study = study
        self.console = Console(stderr=True, highlight=False)

    def job_done(self, job: Job, phase: str) -> None:
        study = self.study
        phase_jobs = [j for j in study.jobs if j.phase == job.phase]
        done = sum(j.num in study.statuses for j in phase_jobs)
        best = []
        for arm in study.arms:
            scored = [
                (trial_score(study.trial_scores(i)), i)
                for i, t in enumerate(study.trials)
                if t.arm == arm.label and all(j.num in study.statuses for j in study.jobs if j.trial == i)
            ]
            if scored and math.isfinite(min(scored)[0]):
                score, index = min(scored)
                values = " ".join(f"{k}={format_value(v)}" for k, v in study.trials[index].values.items())
                best.append(f"{arm.label}: {values} ({fmt(shown_score(score, study.tune))})")
        status = study.statuses.get(job.num, "?")
        line = f"[bold]tune[/bold] {phase} {done}/{len(phase_jobs)} jobs · job {job.num} {status}"
        if best and job.phase != CONFIRMATION:
            line += " · best " + " | ".join(best)
        self.console.print(line)

    def warn(self, text: str) -> None:
        self.console.print(f"[bold yellow]tune: warning:[/bold yellow] {text}")

    def finish(self, study_dir: Path) -> None:
        for label, values in self.study.chosen.items():
            chosen = " ".join(f"{k}={format_value(v)}" for k, v in values.items())
            self.console.print(f"[bold]tune[/bold] chosen for {label}: {chosen}")
        self.console.print(
            f"[bold]tune[/bold] study written to {study_dir}/ ({TUNE_JSON}, {TUNE_MD}); compare the confirmation "
            f"runs with: memexp report {study_dir}"
        )


# ----------------------------------------------------------------------------------------------
# The command


def plan_search(overrides: list[str]) -> tuple[Any, list[str]]:
    """What `memexp tune <overrides>` would run first, without running it (for `memexp plan tune`):
    the sweep (its config and every search job with its composed config), and lines describing what
    follows (extensions and confirmation depend on the search's results)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from memexp import hydra_compat
    from memexp.rundir import Job as SweepJob
    from memexp.rundir import Sweep
    from memexp.train import config_dir, register_configs

    register_configs()
    composer = hydra_compat.SweepComposer(config_dir(), "train", task_name="train")
    cfg = composer.sweep_config(["hydra/sweeper=tune", TASK_NAME_OVERRIDE, *overrides])
    tune: TuneConfig = OmegaConf.to_object(cfg.tune)  # type: ignore[assignment]
    try:
        tune.check()
    except ConfigValueError as error:
        raise error.with_prefix("tune") from None
    params = dict(cfg.hydra.sweeper.get("params") or {})
    arguments = sweep_arguments(params, list(cfg.hydra.overrides.task))
    arms, fixed = plan_arms(OverridesParser.create().parse_overrides(arguments), tune)
    study = Study(tune, arms, fixed, *seeds_of(tune))
    jobs = [SweepJob(job.overrides, composer.job_config(cfg, job.overrides)) for job in study.search_jobs()]
    after = [
        f"then: {len(arms)} arms x {tune.confirm_seeds} confirmation seeds {study.confirm_seeds} = "
        f"{len(arms) * tune.confirm_seeds} confirmation jobs with each arm's chosen setting",
    ]
    if tune.extend_edges:
        after.append(f"and up to {tune.max_extensions} edge extensions per arm before that (grid search only)")
    for arm in arms:
        space = "; ".join(
            f"{key}: {', '.join(format_value(v) for v in values)} ({arm.space_source[key]})"
            for key, values in arm.space.items()
        )
        after.append(f"arm {arm.label}: {space}")
    return Sweep(cfg, jobs), after


def main() -> int:
    """`memexp tune <overrides>`: `memexp train -m` with the tune sweeper."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(
            "usage: memexp tune <the overrides of memexp train -m ...> [tune.<key>=<value> ...]\n\n" + (__doc__ or "")
        )
        return 0
    from memexp.job import main as train_main

    sys.argv = [
        sys.argv[0],
        "-m",
        "hydra/sweeper=tune",
        "task_name=tune",
        *(a for a in args if a not in ("-m", "--multirun")),
    ]
    return train_main()
