"""Grouping runs: runs that differ only in the seed (and in settings that cannot change the
numbers, such as the progress display) form one group, aggregated over seeds."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from memexp.errors import MemexpError
from memexp.report.runs import FINISHED, STATUSES, RunRecord

# Keys that never distinguish groups: the seed is what we aggregate over; the rest are where and how
# a run reports, not what it computes. Glob patterns; extended with --ignore.
DEFAULT_IGNORED = ("seed", "trainer.progress", "logger", "logger.*", "paths.*", "hydra.*", "task_name")


@dataclass
class Group:
    label: str  # "optimizer=adamw,optimizer.lr=0.001" (or "all runs" when nothing but the seed varies)
    settings: dict[str, str]  # the grouping keys' values
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def finished(self) -> list[RunRecord]:
        return [run for run in self.runs if run.status == FINISHED]

    def counts(self) -> dict[str, int]:
        return {status: sum(run.status == status for run in self.runs) for status in STATUSES}

    def seed_values(self, metric: str) -> dict[int, float]:
        """seed -> final value over finished runs. A repeated seed (the same sweep run twice) counts
        once, its first run, so it cannot shrink the std by pseudo-replication."""
        values: dict[int, float] = {}
        for run in self.finished:
            if run.seed is not None and metric in run.final and run.seed not in values:
                values[run.seed] = run.final[metric]
        return values

    def final_values(self, metric: str) -> list[float]:
        """One value per seed (runs whose seed is unknown count each)."""
        unseeded = [run.final[metric] for run in self.finished if run.seed is None and metric in run.final]
        return [*self.seed_values(metric).values(), *unseeded]


def is_ignored(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def candidate_keys(runs: Iterable[RunRecord]) -> list[str]:
    """Keys a run could differ in: the command-line overrides; for runs without any (W&B), the
    flattened config."""
    keys: dict[str, None] = {}
    for run in runs:
        for key in run.overrides or run.config:
            keys.setdefault(key, None)
    return list(keys)


def collapse_group_keys(keys: list[str], runs: Sequence[RunRecord]) -> list[str]:
    """For config diffs (W&B runs): when ``optimizer.name`` varies, group by ``optimizer`` (its name)
    and drop the ``optimizer.*`` leaves that the name determines (each name's runs agree on them), so
    the label reads ``optimizer=adamw``, not every hyperparameter that comes with AdamW."""
    result = list(keys)
    for key in keys:
        if not key.endswith(".name"):
            continue
        group = key[: -len(".name")]
        siblings = [k for k in result if k.startswith(group + ".") and k != key]
        determined = []
        for sibling in siblings:
            by_name: dict[str, set[str]] = {}
            for run in runs:
                by_name.setdefault(run.setting(key), set()).add(run.setting(sibling))
            if all(len(values) == 1 for values in by_name.values()):
                determined.append(sibling)
        result = [group if k == key else k for k in result if k not in determined]
        # Runs answer setting("optimizer") from their choices, as local runs do from Hydra's.
        for run in runs:
            if group not in run.choices and key in run.config:
                run.choices[group] = str(run.config[key])
    return result


def varying_keys(runs: Sequence[RunRecord], ignored: Sequence[str]) -> list[str]:
    keys = [k for k in candidate_keys(runs) if not is_ignored(k, ignored)]
    varying = [k for k in keys if len({run.setting(k) for run in runs}) > 1]
    if any(not run.overrides for run in runs):
        varying = collapse_group_keys(varying, runs)
    return sorted(varying)


def group_runs(
    runs: Sequence[RunRecord], group_by: Sequence[str] | None = None, ignore: Sequence[str] = ()
) -> tuple[list[str], list[Group]]:
    """(grouping keys, groups in a stable order). ``group_by`` fixes the keys; otherwise they are the
    keys whose value differs between runs, minus the ignored ones."""
    if not runs:
        raise MemexpError("no runs to group")
    if group_by:
        known = {key for run in runs for key in (*run.overrides, *run.choices, *run.config)}
        unknown = [key for key in group_by if key not in known]
        if unknown:
            differing = ", ".join(varying_keys(runs, [*DEFAULT_IGNORED, *ignore])) or "none but the seed"
            raise MemexpError(
                f"--group-by={unknown[0]!r} is not allowed: no run has this key; keys that differ: {differing}"
            )
    keys = list(group_by) if group_by else varying_keys(runs, [*DEFAULT_IGNORED, *ignore])
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        values = tuple(run.setting(k) for k in keys)
        if values not in groups:
            label = ",".join(f"{k}={v}" for k, v in zip(keys, values)) or "all runs"
            groups[values] = Group(label=label, settings=dict(zip(keys, values)))
        groups[values].runs.append(run)
    return keys, [groups[values] for values in sorted(groups, key=lambda values: tuple(map(value_order, values)))]


def value_order(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order (lr=2 before lr=10), then words alphabetically."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def duplicate_seeds(group: Group) -> dict[int, list[str]]:
    """Seeds with more than one finished run in a group (e.g. the same sweep run twice); only the
    first is used."""
    by_seed: dict[int, list[str]] = {}
    for run in group.finished:
        if run.seed is not None:
            by_seed.setdefault(run.seed, []).append(run.source)
    return {seed: sources for seed, sources in by_seed.items() if len(sources) > 1}


def find_group(groups: Sequence[Group], name: str, option: str) -> Group:
    """A group by its exact label, or the one group whose label contains ``name``."""
    exact = [g for g in groups if g.label == name]
    matches = exact or [g for g in groups if name in g.label.split(",") or name in g.label]
    if len(matches) != 1:
        labels = ", ".join(g.label for g in groups)
        problem = "matches no group" if not matches else "matches several groups"
        raise MemexpError(f"{option}={name!r} {problem}; groups: {labels}")
    return matches[0]
