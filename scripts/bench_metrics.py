"""Cost of the geom/* metrics: wall time of a default-length training run with metrics=none, default
and full, in one process, alternating (none, default, full, none, ...), so machine noise hits all
three alike. Prints JSON.

    python scripts/bench_metrics.py [--reps 3] [--threads 1] [override ...]

Reported: per setting the median wall and process-CPU time of ``train()``; ``default_overhead`` =
median over reps of default/none - 1 (goal <= 0.05 at the default cadence; ``_cpu``: the same on
CPU time; ``default_direct_overhead``: the passes' own time over the training time without
metrics); ``full_seconds_per_eval`` = the mean
wall time of a full metrics pass. Also a Hessian-vector product micro-benchmark on the probe
set: curvlinops (the ``autodiff`` backend) against a hand-written double backward and against
finite differences, for one vector and for a block of ``max_columns`` vectors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SETTINGS = ("none", "default", "full")


def compose(overrides: list[str]):  # noqa: ANN201
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from memexp.config import register_configs
    from memexp.train import check_config, config_dir

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return check_config(hydra_compose("train", overrides=["logger=none", "trainer.progress=off", *overrides]))


def timed_run(overrides: list[str], out_dir: Path) -> tuple[float, float, list[float], int]:
    from memexp.logging import LocalLogger
    from memexp.train import build_run, train

    run = build_run(compose(overrides))
    out_dir.mkdir(parents=True)
    started, started_cpu = time.perf_counter(), time.process_time()
    summary = train(run, out_dir, [LocalLogger(out_dir)])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    passes = list(run.geometry.seconds) if run.geometry is not None else []
    return elapsed, cpu, passes, int(summary["step"])


def hvp_benchmark(overrides: list[str], reps: int = 5) -> dict[str, float]:
    from memexp.metrics.block_hvp import HessianOperator, ProbeLoss, curvature_mode, flatten, split_batch
    from memexp.train import build_run

    cfg = compose(["metrics=full", *overrides])
    run = build_run(cfg)
    x, y = run.eval_sets["train"]
    batch = (x[: cfg.metrics.probe_size], y[: cfg.metrics.probe_size])
    block = cfg.metrics.max_columns
    results: dict[str, float] = {"params": float(sum(p.numel() for p in run.model.parameters()))}
    with curvature_mode(run.model):
        probe = ProbeLoss(run.model, run.task.loss, split_batch(*batch, cfg.metrics.probe_chunk))
        vectors = torch.randn(probe.dim, block, generator=torch.Generator().manual_seed(0)).to(x.device)

        def double_backward(columns: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                loss = run.task.loss(run.model(batch[0]), batch[1])
                grads = flatten(torch.autograd.grad(loss, probe.params, create_graph=True))
                products = [
                    torch.autograd.grad(grads @ columns[:, k], probe.params, retain_graph=True)
                    for k in range(columns.shape[1])
                ]
                return torch.stack([flatten(product) for product in products], 1)

        candidates = {
            "curvlinops": HessianOperator(probe, "autodiff").matmat,
            "double_backward": double_backward,
            "finite_difference": HessianOperator(probe, "finite_difference").matmat,
        }
        reference = candidates["double_backward"](vectors[:, :1])
        for name, matmat in candidates.items():
            results[f"{name}_rel_err_vs_double_backward"] = float(
                (matmat(vectors[:, :1]) - reference).norm() / reference.norm()
            )
            for columns in (1, block):
                matmat(vectors[:, :columns])  # warm-up
                started = time.perf_counter()
                for _ in range(reps):
                    matmat(vectors[:, :columns])
                results[f"{name}_ms_per_hvp_block{columns}"] = 1e3 * (time.perf_counter() - started) / reps / columns
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help="comma-separated subset of none,default,full (none is always run)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run, e.g. model=cnn")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    settings = ["none", *(name for name in SETTINGS[1:] if name in args.settings.split(","))]
    wall: dict[str, list[float]] = {name: [] for name in settings}
    cpu: dict[str, list[float]] = {name: [] for name in settings}
    passes: dict[str, list[float]] = {name: [] for name in settings}
    steps = 0
    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        for rep in range(args.reps):
            for name in settings:
                elapsed, cpu_s, seconds, steps = timed_run(
                    [f"metrics={name}", *args.overrides], Path(tmp) / f"{name}{rep}"
                )
                wall[name].append(elapsed)
                cpu[name].append(cpu_s)
                passes[name].extend(seconds)
    ratios = {name: [w / n for w, n in zip(wall[name], wall["none"])] for name in settings}
    cpu_ratios = {name: [w / n for w, n in zip(cpu[name], cpu["none"])] for name in settings}
    report: dict[str, Any] = {
        "overrides": args.overrides,
        "threads": torch.get_num_threads(),
        "reps": args.reps,
        "steps": steps,
        "wall_s": {name: statistics.median(times) for name, times in wall.items()},
        "wall_s_all": wall,
        "cpu_s": {name: statistics.median(times) for name, times in cpu.items()},
        "metrics_passes_per_run": {name: len(passes[name]) // args.reps for name in settings},
    }
    for name in settings[1:]:
        report[f"{name}_overhead"] = statistics.median(ratios[name]) - 1
        # Process CPU time: with one intra-op thread it is the work done, much less sensitive than
        # wall time to other processes on a shared machine.
        report[f"{name}_overhead_cpu"] = statistics.median(cpu_ratios[name]) - 1
        # The passes' own time over the training time without metrics: the overhead with the
        # machine's noise taken out (the side-by-side ratios above carry it).
        report[f"{name}_direct_overhead"] = sum(passes[name]) / args.reps / statistics.median(wall["none"])
        report[f"{name}_seconds_per_eval"] = statistics.mean(passes[name]) if passes[name] else None
    report["default_overhead_goal"] = 0.05
    if "full" in settings:
        report["hvp"] = hvp_benchmark(args.overrides)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
