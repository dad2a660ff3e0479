"""scripts/paired_equivalence.py on a hand-made runs.csv: the TOST and one-sided p-values by hand."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "paired_equivalence.py"
spec = importlib.util.spec_from_file_location("paired_equivalence", SCRIPT)
paired_equivalence = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired_equivalence)


def test_tost_and_one_sided_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # d = A - B = (0.001, 0.003, -0.001, 0.001): mean 0.001, std sqrt(8e-6/3), se = std/2 = 8.16497e-4.
    # Margin 0.01: t = (0.001 + 0.01)/se = 13.472 and (0.001 - 0.01)/se = -11.023 on 3 dof; with the
    # closed-form t(3) cdf F(t) = 1/2 + [t/(sqrt3 (1 + t^2/3)) + atan(t/sqrt3)]/pi:
    # p_lower = 1 - F(13.472) = 4.42159e-4, p_upper = F(-11.023) = 7.99569e-4, TOST p = the larger.
    # d > 0: t = 0.001/se = 1.22474, p = 1 - F(1.22474) = 0.154034; d < 0: 1 - 0.154034.
    runs = tmp_path / "runs.csv"
    with runs.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "seed", "status", "train/loss"])
        for seed, (a, b) in enumerate([(0.101, 0.1), (0.203, 0.2), (0.299, 0.3), (0.401, 0.4)]):
            writer.writerow(["g=a", seed, "finished", a])
            writer.writerow(["g=b", seed, "finished", b])
        writer.writerow(["g=a", 9, "finished", 0.5])  # its partner never reached the reading point: left out
        writer.writerow(["g=b", 9, "not reached", 0.001])
    code = paired_equivalence.main(
        [str(runs), "--a", "g=a", "--b", "g=b", "--metric", "train/loss", "--margin", "0.01"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)["comparisons"][0]
    assert result["n"] == 4
    assert result["mean_diff"] == pytest.approx(0.001, abs=1e-12)
    assert result["tost"]["p_lower"] == pytest.approx(4.42159e-4, rel=1e-4)
    assert result["tost"]["p_upper"] == pytest.approx(7.99569e-4, rel=1e-4)
    assert result["tost"]["p"] == result["tost"]["p_upper"]
    assert result["greater"] == pytest.approx(0.154034, rel=1e-4)
    assert result["less"] == pytest.approx(1 - 0.154034, rel=1e-4)
    assert result["two_sided"] == pytest.approx(2 * 0.154034, rel=1e-4)


def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert paired_equivalence.main([str(tmp_path / "absent.csv"), "--a", "x", "--b", "y", "--metric", "m"]) == 2
    (tmp_path / "r.csv").write_text("group,seed,m\n")
    assert (
        paired_equivalence.main([str(tmp_path / "r.csv"), "--a", "x", "--b", "y", "--metric", "m", "--margin", "-1"])
        == 2
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("is not allowed" in line for line in lines)
