"""Which runs pool together: all that differ only in the seed (and in settings that cannot change
the numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memexp.errors import MemexpError
from memexp.report.grouping import duplicate_seeds, find_group, group_runs
from memexp.report.runs import RunRecord, find_runs, flatten
from tests.report.conftest import RunWriter


def test_groups_by_the_override_that_differs_ignoring_seed_and_display(tmp_path: Path, make_run: RunWriter) -> None:
    for i, (optimizer, seed, progress) in enumerate([("sgd", 0, "off"), ("sgd", 1, "plain"), ("adamw", 0, "off")]):
        make_run(
            tmp_path / str(i),
            seed=seed,
            overrides={"optimizer": optimizer, "trainer.progress": progress, "trainer": "quick"},
            choices={"optimizer": optimizer},
        )
    keys, groups = group_runs(find_runs([tmp_path]))
    assert keys == ["optimizer"]
    assert [(g.label, sorted(r.seed for r in g.runs)) for g in groups] == [
        ("optimizer=adamw", [0]),
        ("optimizer=sgd", [0, 1]),
    ]


def test_runs_from_two_sweeps_compare_by_their_resolved_values(tmp_path: Path, make_run: RunWriter) -> None:
    # Sweep a typed lr=0.10, sweep b left it at its default 0.1 but changed the model: the same lr.
    make_run(tmp_path / "a" / "0", seed=0, overrides={"optimizer.lr": "0.10"}, config={"optimizer": {"lr": 0.1}})
    make_run(
        tmp_path / "b" / "0",
        seed=0,
        overrides={"model": "cnn"},
        choices={"model": "cnn"},
        config={"optimizer": {"lr": 0.1}},
    )
    make_run(tmp_path / "b" / "1", seed=0, overrides={"optimizer.lr": "0.01"}, config={"optimizer": {"lr": 0.01}})
    keys, groups = group_runs(find_runs([tmp_path]))
    assert keys == ["model", "optimizer.lr"]
    assert [g.label for g in groups] == [
        "model=cnn,optimizer.lr=0.1",
        "model=mlp,optimizer.lr=0.01",
        "model=mlp,optimizer.lr=0.1",
    ]


def test_numeric_values_sort_numerically_and_repeated_seeds_count_once(tmp_path: Path, make_run: RunWriter) -> None:
    for i, (lr, seed, val) in enumerate([(10, 0, 1.0), (2, 0, 2.0), (2, 0, 2.5), (2, 1, 3.0)]):
        make_run(
            tmp_path / str(i),
            seed=seed,
            overrides={"optimizer.lr": str(lr)},
            config={"optimizer": {"lr": lr}},
            final={"test/loss": val},
        )
    _, groups = group_runs(find_runs([tmp_path]))
    assert [g.label for g in groups] == ["optimizer.lr=2", "optimizer.lr=10"]
    assert groups[0].final_values("test/loss") == [2.0, 3.0]  # the second seed-0 run is a duplicate
    assert list(duplicate_seeds(groups[0])) == [0]


def test_group_by_and_ignore(tmp_path: Path, make_run: RunWriter) -> None:
    for i, (optimizer, lr) in enumerate([("sgd", 0.1), ("sgd", 0.2), ("adamw", 0.1)]):
        make_run(
            tmp_path / str(i),
            seed=i,
            overrides={"optimizer": optimizer, "optimizer.lr": str(lr)},
            choices={"optimizer": optimizer},
            config={"optimizer": {"name": optimizer, "lr": lr}},
        )
    runs = find_runs([tmp_path])
    assert group_runs(runs, group_by=["optimizer"])[0] == ["optimizer"]
    keys, groups = group_runs(runs, ignore=["optimizer.*"])
    assert keys == ["optimizer"] and [len(g.runs) for g in groups] == [1, 2]
    with pytest.raises(
        MemexpError,
        match="--group-by='optimiser' is not allowed: no run has this key; keys that differ: optimizer, optimizer.lr",
    ):
        group_runs(runs, group_by=["optimiser"])


def test_only_seeds_differ_gives_one_group() -> None:
    runs = [RunRecord(source=str(i), status="finished", seed=i, overrides={"seed": str(i)}) for i in range(3)]
    keys, groups = group_runs(runs)
    assert keys == [] and [g.label for g in groups] == ["all runs"] and len(groups[0].runs) == 3


def test_config_only_runs_collapse_to_the_component_name() -> None:
    """W&B runs carry a config, not overrides: group by optimizer=<name>, not by every
    hyperparameter that comes with the optimizer; a hyperparameter swept within one optimizer stays."""

    def wandb_like(seed: int, name: str, lr: float, beta: float) -> RunRecord:
        config = {"seed": seed, "optimizer": {"name": name, "lr": lr, "beta": beta}, "model": {"name": "mlp"}}
        return RunRecord(source=f"wandb:{name}{seed}", status="finished", seed=seed, config=flatten(config))

    runs = [
        wandb_like(0, "sgd", 0.1, 0.9),
        wandb_like(1, "sgd", 0.1, 0.9),
        wandb_like(0, "adamw", 0.001, 0.9),
        wandb_like(0, "adamw", 0.001, 0.95),
    ]
    keys, groups = group_runs(runs)
    assert keys == ["optimizer", "optimizer.beta"]
    assert [g.label for g in groups] == [
        "optimizer=adamw,optimizer.beta=0.9",
        "optimizer=adamw,optimizer.beta=0.95",
        "optimizer=sgd,optimizer.beta=0.9",
    ]


def test_find_group_by_label_or_unique_part() -> None:
    runs = [
        RunRecord(source=str(i), status="finished", seed=0, overrides={"optimizer": name, "model": model})
        for i, (name, model) in enumerate([("sgd", "mlp"), ("adamw", "mlp"), ("adamw", "cnn")])
    ]
    _, groups = group_runs(runs)
    assert find_group(groups, "model=mlp,optimizer=sgd", "--baseline").label == "model=mlp,optimizer=sgd"
    assert find_group(groups, "optimizer=sgd", "--baseline").label == "model=mlp,optimizer=sgd"
    with pytest.raises(MemexpError, match="--baseline='optimizer=adamw' matches several groups"):
        find_group(groups, "optimizer=adamw", "--baseline")
    with pytest.raises(MemexpError, match="matches no group; groups: model=cnn"):
        find_group(groups, "lion", "--baseline")
