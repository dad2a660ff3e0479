"""`memexp report` end to end on synthetic sweeps with known numbers: the table, the paired test,
the files, the plots, and every way a run can be missing or broken."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.image import imread

from memexp.cli import main as memexp_main
from memexp.report.aggregate import build_report
from memexp.report.grouping import group_runs
from memexp.report.plots import plan_plots
from memexp.report.runs import find_runs
from tests.report.conftest import RunWriter, curve_history, write_multirun_yaml

# Final held-out losses per seed, chosen so the statistics are easy by hand.
SGD_VAL = {0: 0.5, 1: 0.7, 2: 0.9}  # mean 0.7, std 0.2
ADAMW_VAL = {0: 0.4, 1: 0.4, 2: 0.7}  # mean 0.5, std sqrt(0.03); A − B = (0.1, 0.3, 0.2)
SGD_SHARPNESS = {0: 2.0, 1: 4.0, 2: 6.0}  # last geom/sharpness: mean 4, std 2


def make_sweep(root: Path, make_run: RunWriter) -> Path:
    """sgd seeds 0-2 finished; adamw seeds 0-2 finished, plus seed 3 diverged and seed 4 failed."""
    write_multirun_yaml(root, ["optimizer=sgd,adamw", "seed=0,1,2", "trainer=quick"])
    num = 0

    def run(optimizer: str, seed: int, **kwargs: object) -> None:
        nonlocal num
        make_run(
            root / str(num),
            seed=seed,
            overrides={"optimizer": optimizer, "trainer": "quick"},
            choices={"optimizer": optimizer},
            **kwargs,
        )
        num += 1

    for seed, val in SGD_VAL.items():
        run(
            "sgd",
            seed,
            history=curve_history(2.0 + 0.2 * seed, 0.4 + 0.05 * seed, geom=SGD_SHARPNESS[seed]),
            final={"train/loss": 0.4, "test/loss": val, "gap/loss": val - 0.4, "train/acc": 0.9, "test/acc": 0.8},
        )
    for seed, val in ADAMW_VAL.items():
        run(
            "adamw",
            seed,
            history=curve_history(2.5 - 0.2 * seed, 0.3 + 0.05 * seed),
            final={"train/loss": 0.3, "test/loss": val, "gap/loss": val - 0.3, "train/acc": 0.95, "test/acc": 0.85},
        )
    diverged = curve_history(2.5, 0.3)[:2] + [{"step": 15, "train/batch_loss": "nan", "lr": 0.1, "epoch": 0.4}]
    run("adamw", 3, status="diverged", history=diverged, final={"train/loss": float("nan")})
    run("adamw", 4, status="failed", error="RuntimeError: boom", history=curve_history(2.5, 0.3)[:1])
    return root


def test_table_statistics_are_exact(tmp_path: Path, make_run: RunWriter) -> None:
    keys, groups = group_runs(find_runs([make_sweep(tmp_path / "sweep", make_run)]))
    report = build_report(keys, groups)
    sgd = report.estimates[("optimizer=sgd", "test/loss")]
    adamw = report.estimates[("optimizer=adamw", "test/loss")]
    assert (sgd.n, sgd.mean, sgd.std) == (3, pytest.approx(0.7, abs=1e-15), pytest.approx(0.2, rel=1e-12))
    assert (adamw.n, adamw.mean, adamw.std) == (3, pytest.approx(0.5, abs=1e-15), pytest.approx(math.sqrt(0.03)))
    t_975 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # df=2 closed form: t_p = (2p - 1) / sqrt(2p(1 - p))
    half = t_975 * 0.2 / math.sqrt(3)
    assert (sgd.ci_low, sgd.ci_high) == (pytest.approx(0.7 - half, rel=1e-12), pytest.approx(0.7 + half, rel=1e-12))
    sharp = report.estimates[("optimizer=sgd", "geom/sharpness")]
    assert (sharp.n, sharp.mean, sharp.std) == (3, 4.0, 2.0)
    assert report.estimates[("optimizer=adamw", "geom/sharpness")].n == 0  # not logged there
    # the gap triple first, then the implicit-regularization metrics, cost last
    assert report.metrics == [
        "train/loss",
        "test/loss",
        "gap/loss",
        "train/acc",
        "test/acc",
        "gap/acc",
        "geom/sharpness",
        "wall_time_s",
    ]


def test_cli_writes_the_report_and_counts_broken_runs_apart(
    tmp_path: Path, make_run: RunWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = make_sweep(tmp_path / "sweep", make_run)
    assert memexp_main(["report", "--group-by", "optimizer", "--baseline", "optimizer=sgd", str(sweep)]) == 0
    printed = capsys.readouterr().out
    out = sweep / "report"
    assert "0.7 ± 0.2" in printed and "n=3, +1 diverged, +1 failed" in printed
    assert "optimizer=adamw − optimizer=sgd: paired over seeds 0, 1, 2" in printed

    rows = list(csv.DictReader((out / "summary.csv").open()))
    row = next(r for r in rows if r["group"] == "optimizer=sgd" and r["metric"] == "test/loss")
    assert (float(row["mean"]), float(row["std"]), row["n"], row["optimizer"]) == (
        pytest.approx(0.7, abs=1e-15),
        pytest.approx(0.2, rel=1e-12),
        "3",
        "sgd",
    )
    adamw = next(r for r in rows if r["group"] == "optimizer=adamw" and r["metric"] == "test/loss")
    assert (adamw["finished"], adamw["diverged"], adamw["failed"], adamw["missing"]) == ("3", "1", "1", "0")

    comparison = next(r for r in csv.DictReader((out / "comparisons.csv").open()) if r["metric"] == "test/loss")
    t = 2 * math.sqrt(3)  # differences adamw − sgd: -0.1, -0.3, -0.2
    assert (comparison["group_a"], comparison["group_b"], comparison["seeds"]) == (
        "optimizer=adamw",
        "optimizer=sgd",
        "0 1 2",
    )
    assert float(comparison["mean_diff"]) == pytest.approx(-0.2, rel=1e-12)
    assert float(comparison["t_pvalue"]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert float(comparison["wilcoxon_pvalue"]) == pytest.approx(0.25)  # all three negative: 2/2^3

    statuses = {(r["group"], r["seed"]): r["status"] for r in csv.DictReader((out / "runs.csv").open())}
    assert statuses[("optimizer=adamw", "3")] == "diverged" and statuses[("optimizer=adamw", "4")] == "failed"

    text = (out / "report.md").read_text()
    assert "Runs: 6 finished, 1 diverged, 1 failed, 0 incomplete, 0 missing." in text
    assert "| failed | optimizer=adamw | 4 |" in text and "RuntimeError: boom at step 10/20" in text
    assert "Wilcoxon signed-rank" in text and "paired t-test" in text
    assert f"by `memexp report --group-by optimizer --baseline optimizer=sgd {sweep}`" in text
    for plot in plan_plots(group_runs(find_runs([sweep]))[1], per_tensor=False):
        assert f"]({plot.relative})" in text


def test_every_plot_is_written_and_not_blank(tmp_path: Path, make_run: RunWriter) -> None:
    sweep = make_sweep(tmp_path / "sweep", make_run)
    assert memexp_main(["report", str(sweep), "--quiet"]) == 0
    out = sweep / "report"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == [
        "acc_curves.png",
        "gap.png",
        "loss_curves.png",
        "metrics/geom_sharpness.png",
        "metrics/lr.png",
        "metrics/train_batch_loss.png",
    ]
    palette = [np.asarray(colormaps["tab10"](i)[:3]) for i in range(2)]
    for name in written:
        pixels = imread(out / name)[..., :3]
        assert pixels.shape[0] > 200 and pixels.var() > 1e-3, name
        if name == "loss_curves.png":  # one colour per group, for its line and its seed band
            for colour in palette:
                line = np.all(np.abs(pixels - colour) < 0.02, axis=-1)
                band = np.all(np.abs(pixels - (0.8 + 0.2 * colour)) < 0.02, axis=-1)  # alpha 0.2 on white
                assert line.sum() > 200 and band.sum() > 2000, (name, colour, line.sum(), band.sum())


def test_missing_and_incomplete_runs_are_reported_not_crashed_on(
    tmp_path: Path, make_run: RunWriter, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # rich folds long cells at the terminal width
    sweep = tmp_path / "sweep"
    write_multirun_yaml(sweep, ["optimizer=sgd,lion", "seed=0,1"])
    make_run(
        sweep / "0", seed=0, overrides={"optimizer": "sgd"}, history=curve_history(2.0, 1.0), final={"test/loss": 1.0}
    )
    make_run(
        sweep / "1", seed=1, overrides={"optimizer": "sgd"}, history=curve_history(2.0, 1.0), final={"test/loss": 1.2}
    )
    make_run(
        sweep / "2",
        seed=0,
        overrides={"optimizer": "lion"},
        choices={"optimizer": "lion"},
        status="running",
        history=curve_history(2.0, 1.0)[:2],
    )
    (sweep / "3" / ".hydra").mkdir(parents=True)  # a job that died before writing its config
    assert memexp_main(["report", str(sweep), "--quiet", "--no-plots"]) == 0
    text = (sweep / "report" / "report.md").read_text()
    assert "Runs: 2 finished, 0 diverged, 0 failed, 2 incomplete, 1 missing." in text
    assert "no summary.json (no metrics): never started" in text
    assert "| missing | optimizer=lion | 1 |" in text
    assert "still running, or killed without a final summary" in text
    assert "No comparison of `optimizer=lion` and `optimizer=sgd`: 0 common finished seed(s)" in text
    # the terminal shows the missing job's overrides too (square brackets are not taken for markup)
    assert memexp_main(["report", str(sweep), "--no-plots"]) == 0
    assert f"{sweep} [optimizer=lion seed=1]" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--confidence", "1.5"], "--confidence=1.5 is not allowed: a number strictly between 0 and 1"),
        (["EXTRA"], "--out is required with several PATHs"),
        (["--wandb", "no-slash"], "--wandb='no-slash' is not allowed: ENTITY/PROJECT"),
        (["--baseline", "optimizer=lion"], "--baseline='optimizer=lion' matches no group"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, make_run: RunWriter, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    sweep = make_sweep(tmp_path / "sweep", make_run)
    argv = [str(tmp_path / "sweep" / "0") if a == "EXTRA" else a for a in argv]
    assert memexp_main(["report", str(sweep), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memexp report: error: ") and message in err
    assert not (sweep / "report").exists()
    assert not any(p.name.startswith(".report.building") for p in sweep.iterdir())


def test_rerun_replaces_a_report_but_never_another_directory(
    tmp_path: Path, make_run: RunWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = make_sweep(tmp_path / "sweep", make_run)
    assert memexp_main(["report", str(sweep), "--quiet", "--no-plots"]) == 0
    assert memexp_main(["report", str(sweep), "--quiet", "--band", "minmax", "--log-x"]) == 0
    assert (sweep / "report" / "loss_curves.png").is_file()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert memexp_main(["report", str(sweep), "--out", str(other), "--quiet"]) == 2
    assert "exists and is not a memexp report" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_per_tensor_breakdowns_only_on_request(tmp_path: Path, make_run: RunWriter) -> None:
    for seed in (0, 1):
        history = [
            {
                "step": 10,
                "geom/weight_norm": 3.0 + seed,
                "geom/weight_norm/fc1.weight": 2.0,
                "geom/weight_norm/fc1.bias": 1.0,
                "geom/grad_l1/odd": 5.0,
            }
        ]
        make_run(tmp_path / str(seed), seed=seed, history=history, final={"test/loss": 1.0})
    keys, groups = group_runs(find_runs([tmp_path]))
    default = build_report(keys, groups)
    # geom/grad_l1/odd stays: there is no aggregate geom/grad_l1 it breaks down
    assert default.metrics == ["test/loss", "geom/grad_l1/odd", "geom/weight_norm", "wall_time_s"]
    assert default.per_tensor_left_out == 2
    assert default.estimates[("all runs", "geom/weight_norm")].mean == 3.5
    full = build_report(keys, groups, per_tensor=True)
    assert "geom/weight_norm/fc1.weight" in full.metrics and full.per_tensor_left_out == 0
    planned = [s.relative for s in plan_plots(groups, per_tensor=False)]
    assert planned == ["metrics/geom_grad_l1_odd.png", "metrics/geom_weight_norm.png"]
    assert len(plan_plots(groups, per_tensor=True)) == 4


def test_help_is_fast_to_import() -> None:
    """`memexp report --help` loads neither matplotlib nor scipy (nor torch)."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from memexp.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['report', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'usage: memexp report' in out.getvalue()\n"
        "print(sorted(m for m in ('matplotlib', 'scipy', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
