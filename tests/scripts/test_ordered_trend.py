"""scripts/ordered_trend.py on hand-made runs.csv tables: the adjacent differences, the Holm step,
Page's L statistic and the per-seed slope, computed by hand."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ordered_trend.py"
spec = importlib.util.spec_from_file_location("ordered_trend", SCRIPT)
ordered_trend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ordered_trend)

ORDER = ["arm=a", "arm=b", "arm=c"]


def write_runs(path: Path, rows: dict[str, list[float]], metric: str = "gap/loss") -> Path:
    """None: a run that never reached a `report --at` reading point (listed with its final value)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "seed", "status", metric])
        for seed, values in rows.items():
            for arm, value in zip(ORDER, values):
                writer.writerow(
                    [arm, seed, "finished", value] if value is not None else [arm, seed, "not reached", 99.0]
                )
    return path


def run(tmp_path: Path, rows: dict[str, list[float]], capsys: pytest.CaptureFixture[str]) -> dict:
    runs = write_runs(tmp_path / "runs.csv", rows)
    assert ordered_trend.main([str(runs), "--order", *ORDER, "--metric", "gap/loss"]) == 0
    return json.loads(capsys.readouterr().out)["metrics"]["gap/loss"]


def test_increasing_table_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # b - a = (1, 2, 3, 2): mean 2, std sqrt(2/3); c - b = (10, 11, 9, 10): mean 10, std sqrt(2/3)
    # paired t = mean / (std/2): 4.899 and 24.49 on 3 dof; the t(3) cdf in closed form,
    # F(t) = 1/2 + [t/(sqrt3 (1 + t^2/3)) + atan(t/sqrt3)]/pi, gives p = 2(1 - F) = 0.0162766 and 1.49157e-4;
    # Holm over 2: 1.49157e-4 * 2 = 2.98e-4, then max(2.98e-4, 0.0162766 * 1) = 0.0162766.
    rows = {"0": [0, 1, 11], "1": [1, 3, 14], "2": [2, 5, 14], "3": [0, 2, 12]}
    result = run(tmp_path, rows, capsys)
    first, second = result["adjacent"]
    assert first["mean"] == pytest.approx(2.0) and second["mean"] == pytest.approx(10.0)
    assert first["t_pvalue"] == pytest.approx(0.0162766, rel=1e-5)
    assert second["t_pvalue"] == pytest.approx(1.49157e-4, rel=1e-5)
    assert second["t_pvalue_holm"] == pytest.approx(2 * second["t_pvalue"])
    assert first["t_pvalue_holm"] == pytest.approx(first["t_pvalue"])
    assert result["monotone_increasing"] is True
    # Every seed ranks the arms 1 < 2 < 3: L = sum_j j * (4 j) = 4 * (1 + 4 + 9) = 56, the maximum;
    # exact one-sided p = (1/3!)^4 = 1/1296.
    assert result["page"]["L"] == 56.0
    assert result["page"]["p_one_sided_increasing"] == pytest.approx(1 / 1296)
    # Slope on positions (0, 1, 2) = (c - a)/2 per seed: 5.5, 6.5, 6, 6 -> mean 6.
    assert result["slope"]["mean"] == pytest.approx(6.0)


def test_seeds_missing_an_arm_are_left_out_and_a_flat_step_is_not_monotone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = {"0": [0, 1, 1.5], "1": [1, 2, 1.5], "2": [2, 3, 3.5], "3": [0, None, 2]}
    result = run(tmp_path, rows, capsys)
    assert result["n_seeds"] == 3 and result["seeds"] == ["0", "1", "2"]
    assert result["adjacent"][0]["mean"] == pytest.approx(1.0)
    assert result["monotone_increasing"] is False  # c - b = (0.5, -0.5, 0.5): not significant


def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ordered_trend.main([str(tmp_path / "absent.csv"), "--order", *ORDER, "--metric", "m"]) == 2
    assert ordered_trend.main([str(write_runs(tmp_path / "r.csv", {})), "--order", "a", "b", "--metric", "m"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("is not allowed" in line for line in lines)
