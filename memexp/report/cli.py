"""``memexp report PATH... [--wandb ENTITY/PROJECT[:GROUP]]``: read runs, group them by the settings
that differ (all but the seed), print the table, and write ``report.md``, CSVs and PNG plots.

The report is built in a temporary directory next to the target and moved into place at the end,
so a failure leaves no half-written report (and an earlier report stays intact).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from memexp.errors import MemexpError
from memexp.report.aggregate import Report, build_report
from memexp.report.grouping import DEFAULT_IGNORED, find_group, group_runs
from memexp.report.reading import parse_reading, read_run
from memexp.report.render import markdown, print_report, write_csvs
from memexp.report.runs import RunRecord, find_runs
from memexp.report.stats import Band
from memexp.report.tune_study import TuneStudy, read_tune_study
from memexp.report.wandb_source import WandbSpec, fetch_runs, parse_spec

if TYPE_CHECKING:
    from memexp.report.plots import PlotFile

DESCRIPTION = """Compare runs: group them by the overrides that differ (all but the seed), aggregate
over seeds (mean, std, t-interval, n), test paired seeds between groups (paired t and Wilcoxon),
print the table and write report.md, summary.csv, runs.csv, comparisons.csv and PNG plots."""

EPILOG = """examples:
  memexp report outputs/train/multiruns/2026-11-25_14-30-08
  memexp report outputs/tune/multiruns/2026-11-25_15-00-00      # a tune study: its confirmation runs
  memexp report SWEEP --at train/loss=0.5                       # every run read at matched training loss
  memexp report SWEEP --at step=1000
  memexp report sweep_a sweep_b --out reports/lion_vs_adamw --baseline optimizer=adamw
  memexp report --wandb me/memexp:train-2026-11-25_14-30-08 --out reports/from_wandb"""


def key_list(text: str) -> list[str]:
    """``optimizer,model`` -> [optimizer, model] (comma-separated, so an option never swallows PATH)."""
    keys = [key.strip() for key in text.split(",") if key.strip()]
    if not keys:
        raise argparse.ArgumentTypeError(f"{text!r} names no key")
    return keys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memexp report",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="run dirs or Hydra multirun dirs (searched recursively)"
    )
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT[:GROUP]", help="also read runs from the W&B API (online)")
    parser.add_argument("--out", type=Path, help="report directory (default: PATH/report for a single PATH)")
    parser.add_argument(
        "--group-by",
        type=key_list,
        action="extend",
        metavar="KEY[,KEY...]",
        help="group by these override keys instead of every key that differs (e.g. --group-by optimizer)",
    )
    parser.add_argument(
        "--ignore",
        type=key_list,
        action="extend",
        default=[],
        metavar="PATTERN[,PATTERN...]",
        help=f"keys (globs) that never split groups, besides {', '.join(DEFAULT_IGNORED)}",
    )
    parser.add_argument(
        "--baseline",
        metavar="GROUP",
        help="compare every group with this one (a label, or a "
        "part of one such as optimizer=adamw) instead of every pair",
    )
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument(
        "--band",
        choices=[b.value for b in Band],
        default=Band.std.value,
        help="seed band in plots: mean ± std (default), t-interval of the mean, or min–max",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--log-x", action="store_true", help="log-scaled step axis (for metrics on a log schedule)")
    parser.add_argument(
        "--per-tensor",
        action="store_true",
        help="also tabulate and plot per-tensor metrics (geom/<metric>/<parameter>); by default only their aggregates",
    )
    parser.add_argument("--log-wandb", action="store_true", help="also log the plots and table to W&B as a report run")
    parser.add_argument(
        "--wandb-project", default=None, help="project for --log-wandb (default: the --wandb one, else memexp)"
    )
    parser.add_argument(
        "--wandb-mode",
        choices=["offline", "online"],
        default=None,
        help="for --log-wandb (default: $WANDB_MODE, else offline)",
    )
    parser.add_argument(
        "--at",
        type=parse_reading,
        metavar="METRIC=VALUE|step=N",
        help="read every metric where each run's METRIC first reaches VALUE (matched fit, e.g. train/loss=0.5; "
        "runs that never reach it are listed apart) or at step N, interpolating linearly between logged points",
    )
    parser.add_argument(
        "--all-runs",
        action="store_true",
        help="on a tune study dir: every run (search and confirmation) instead of the confirmation runs",
    )
    parser.add_argument("--quiet", action="store_true", help="no table and no progress bar on the terminal")
    return parser


class Steps:
    """A progress bar on stderr for the slow parts (reading many runs, W&B history, plots); silent
    when stderr is not a terminal (CI, Slurm logs) or with --quiet."""

    def __init__(self, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not (enabled and self.console.is_terminal),
        )

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[[], None]]:
        task_id = self.progress.add_task(description, total=total)
        try:
            yield lambda: self.progress.advance(task_id)
        finally:
            self.progress.remove_task(task_id)


def output_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out).expanduser()
    if len(args.paths) == 1 and not args.wandb:
        return Path(args.paths[0]).expanduser() / "report"
    raise MemexpError("--out is required with several PATHs or with --wandb (the default PATH/report needs one PATH)")


def check_args(args: argparse.Namespace) -> None:
    if not args.paths and not args.wandb:
        raise MemexpError("PATH is required: one or more run dirs or multirun dirs (or --wandb ENTITY/PROJECT)")
    if not 0.0 < args.confidence < 1.0:
        raise MemexpError(f"--confidence={args.confidence} is not allowed: a number strictly between 0 and 1")


def load_runs(args: argparse.Namespace, spec: WandbSpec | None, steps: Steps) -> list[RunRecord]:
    runs: list[RunRecord] = []
    if args.paths:
        paths = args.paths
        study = tune_study(args)
        if study is not None:
            paths = study.confirmation_dirs
            args.group_by = args.group_by or study.arm_keys
        with steps.task("reading run dirs") as advance:
            runs += find_runs(paths, advance)
    if spec is not None:
        with steps.task(f"reading W&B {spec}") as advance:
            runs += fetch_runs(spec, advance)
    return runs


def tune_study(args: argparse.Namespace) -> TuneStudy | None:
    """A single PATH that is a `memexp tune` study dir (it holds tune.json): its confirmation runs,
    unless --all-runs."""
    if len(args.paths) != 1 or args.all_runs:
        return None
    return read_tune_study(Path(args.paths[0]).expanduser())


def check_target(target: Path) -> None:
    if target.exists() and not (target / "report.md").is_file():
        raise MemexpError(f"--out={str(target)!r} exists and is not a memexp report; choose another directory")


def replace_dir(built: Path, target: Path) -> None:
    """Move a finished report into place, replacing an earlier report but keeping its wandb/ (offline
    report runs that may not be synced yet)."""
    check_target(target)
    if target.exists():
        if (target / "wandb").is_dir():
            (target / "wandb").rename(built / "wandb")
        shutil.rmtree(target)
    built.rename(target)


def log_to_wandb(report: Report, out: Path, plots: Sequence[PlotFile], project: str, mode: str) -> str:
    """One W&B run (job_type "report") holding the plots as images and the summary as a table."""
    import wandb

    entity, _, name = project.rpartition("/")
    run = wandb.init(
        project=name,
        entity=entity or None,
        job_type="report",
        mode=mode,
        dir=str(out),
        name=f"report-{out.resolve().parent.name}-{out.name}",
        config={"group_keys": report.keys},
        settings=wandb.Settings(console="off", x_disable_stats=True, disable_git=True, save_code=False, silent=True),
        reinit="finish_previous",
    )
    try:
        table = wandb.Table(columns=["group", "metric", "n", "mean", "std", "ci_low", "ci_high"])
        for (group, metric), est in report.estimates.items():
            table.add_data(group, metric, est.n, est.mean, est.std, est.ci_low, est.ci_high)
        images = {f"report/{p.path.with_suffix('').as_posix()}": wandb.Image(str(out / p.path)) for p in plots}
        run.log({"report/summary": table, **images})
        return str(run.dir)
    finally:
        run.finish()


def run_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    # matplotlib only when a report is made
    from memexp.report.plots import PlotOptions, plan_plots, write_plots

    check_args(args)
    spec = parse_spec(args.wandb) if args.wandb else None
    out = output_dir(args)
    check_target(out)  # before the slow part
    steps = Steps(enabled=not args.quiet)
    with steps.progress:
        runs = load_runs(args, spec, steps)
        if args.at is not None:
            runs = [read_run(run, args.at) for run in runs]
        keys, groups = group_runs(runs, args.group_by, args.ignore)
        baseline = find_group(groups, args.baseline, "--baseline") if args.baseline else None
        report = build_report(keys, groups, args.confidence, baseline, args.per_tensor)

        out.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
        try:
            plots: list[PlotFile] = []
            if not args.no_plots:
                options = PlotOptions(Band(args.band), args.confidence, args.per_tensor, args.log_x)
                with steps.task("plotting", total=len(plan_plots(groups, options.per_tensor))) as advance:
                    plots = write_plots(groups, building, options, advance)
            write_csvs(report, building)
            command = shlex.join(["memexp", "report", *argv])
            created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            inputs = [*args.paths, *([f"wandb:{spec}"] if spec else [])]
            notes = [args.at.describe().capitalize() + "."] if args.at is not None else []
            study = tune_study(args)
            if study is not None:
                notes.append("\n".join(study.summary_lines()))
            (building / "report.md").write_text(markdown(report, plots, command, inputs, created, notes))
            replace_dir(building, out)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    if not args.quiet:
        print_report(report)
        if args.at is not None:
            print(args.at.describe())
    print(f"report written to {out}/ (report.md, summary.csv, runs.csv, comparisons.csv, {len(plots)} plots)")
    if args.log_wandb:
        project = args.wandb_project or (spec.path if spec else "memexp")
        mode = args.wandb_mode or os.environ.get("WANDB_MODE", "offline")
        mode = mode if mode in ("offline", "online") else "offline"
        try:
            location = log_to_wandb(report, out, plots, project, mode)
        except Exception as error:  # noqa: BLE001 - the report itself is written; say what failed, in one line
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise MemexpError(
                f"--log-wandb: the report is written to {out}/ but W&B logging failed "
                f"({type(error).__name__}: {first_line})"
            ) from None
        print(f"plots logged to W&B ({mode}): {location}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return run_report(args, argv)
    except MemexpError as error:
        print(f"memexp report: error: {error}", file=sys.stderr)
        return 2
