"""How accurate is each R_med estimator? Against the exact Hessian diagonal, on the rmed preset's
tiny GPT at a trained checkpoint (docs/rmed.md). Prints one JSON object.

    python scripts/bench_rmed_estimators.py [--steps 200] [--tensors a,b,...|all] [--threads 2] > rmed.json
    python scripts/bench_rmed_estimators.py --markdown rmed.json     # the table in docs/rmed.md

1. Trains ``experiment=rmed_adam_vs_sgd size=tiny optimizer=adamw`` for ``--steps`` steps (the
   preset's tiny length is 200) with metrics off, and takes the probe batch the metrics would use
   (the preset's 16 blocks of 64 tokens, model in eval mode, math attention, fp32).
2. The exact diagonal of the ``--tensors`` (one unit-vector Hessian-vector product per entry, in
   blocks of ``metrics.max_columns``); its wall time gives the seconds per product that every
   estimator's cost is converted with. A full exact diagonal (all 72k parameters) took ~3 h on the
   2 shared cores here (0.15 s per product), so the default is 5 tensors (4,992 entries).
3. On the same tensors: Hutchinson over all parameters (``hutchinson``; the first K of one seeded
   probe sequence, K in ``--probes``), Hutchinson supported on one tensor at a time
   (``hutchinson_per_tensor``), each with the bootstrap interval memexp logs, and the exact entries
   at ``subset_indices`` (``subset``, sizes ``--subset-sizes``, for ``--subset-seeds`` seeds: the
   subset statistic depends on which coordinates are drawn).

Reported per estimator: products and seconds for the measured tensors and for the whole model,
the relative error |R_est / R_exact - 1| per tensor (median and max over tensors), the relative
error of the median over the measured weight tensors (memexp's summary, restricted to them), and
how often the interval contains the exact value.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# Two weight matrices and three vectors, 4,992 entries: ~12 min of exact products on 2 shared cores.
DEFAULT_TENSORS = (
    "blocks.0.attn.c_proj.weight",
    "blocks.1.attn.c_proj.weight",
    "blocks.1.attn.c_attn.bias",
    "blocks.1.mlp.c_fc.bias",
    "blocks.1.ln_2.weight",
)


def compose(overrides: list[str]):  # noqa: ANN201
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from memexp.config import register_configs
    from memexp.train import check_config, config_dir

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return check_config(hydra_compose("train", overrides=["logger=none", "trainer.progress=off", *overrides]))


def trained_run(steps: int, overrides: list[str]) -> tuple[Any, float]:
    from memexp.logging import LocalLogger
    from memexp.train import build_run, train

    cfg = compose(
        [
            "experiment=rmed_adam_vs_sgd",
            "size=tiny",
            "optimizer=adamw",
            f"trainer.max_steps={steps}",
            "metrics.every=0",
            "metrics.r_med_at_steps=[]",  # the preset measures R_med at set steps; here metrics are off
            *overrides,
        ]
    )
    run = build_run(cfg)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        train(run, Path(out_dir), [LocalLogger(Path(out_dir))])
    return run, time.perf_counter() - started


def relative_error(estimate: float, exact: float) -> float:
    return abs(estimate / exact - 1) if math.isfinite(estimate) else math.inf


def summarise(
    method: str,
    setting: dict[str, Any],
    estimates: dict[str, float],
    exact: dict[str, float],
    weight_names: list[str],
    products: int,
    model_products: int,
    seconds_per_product: float,
    intervals: dict[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    from memexp.metrics.curvature import median

    errors = [relative_error(estimates[name], exact[name]) for name in exact]
    row: dict[str, Any] = {
        "method": method,
        **setting,
        "products": products,
        "seconds": products * seconds_per_product,
        "model_products": model_products,
        "model_seconds": model_products * seconds_per_product,
        "rel_error_per_tensor_median": statistics.median(errors),
        "rel_error_per_tensor_max": max(errors),
        "r_med_per_tensor": {name: estimates[name] for name in exact},
    }
    if weight_names:
        summary_exact = float(median(torch.tensor([exact[n] for n in weight_names], dtype=torch.float64)))
        summary_estimate = float(median(torch.tensor([estimates[n] for n in weight_names], dtype=torch.float64)))
        row["rel_error_summary"] = relative_error(summary_estimate, summary_exact)
    if intervals is not None:
        row["interval_covers"] = sum(intervals[n][0] <= exact[n] <= intervals[n][1] for n in exact) / len(exact)
        row["interval_rel_width_median"] = statistics.median(
            (intervals[n][1] - intervals[n][0]) / exact[n] for n in exact
        )
    return row


def probe_contributions(
    matmat: Any,
    dim: int,
    rows: Tensor,
    probes: int,
    seed: int,
    block: int,
    device: torch.device,
    support: tuple[int, int] | None = None,
) -> Tensor:
    """(len(rows), probes): z_k * (H z_k) at ``rows`` for the probes memexp's
    :func:`~memexp.metrics.curvature.hutchinson` draws with this seed and block (so the mean of the
    first K columns is its K-probe diagonal), keeping only the measured rows in memory."""
    from memexp.metrics.curvature import rademacher, seeded_generator

    start, stop = support if support is not None else (0, dim)
    generator = seeded_generator(seed, device)
    columns = []
    for first in range(0, probes, block):
        count = min(block, probes - first)
        z = rademacher((count, stop - start), generator, device, torch.float32).T.contiguous()
        embedded = torch.zeros(dim, count, device=device)
        embedded[start:stop] = z
        columns.append((embedded * matmat(embedded))[rows])
    return torch.cat(columns, dim=1)


def bootstrap_interval(contributions: Tensor, estimate: float, cfg: Any) -> tuple[float, float]:
    from memexp.metrics import curvature

    probes = contributions.shape[1]
    groups = min(cfg.r_med_bootstrap_groups, probes)
    owner = (torch.arange(probes) * groups) // probes
    sums = torch.zeros(contributions.shape[0], groups, dtype=contributions.dtype).index_add_(1, owner, contributions)
    means = sums / torch.bincount(owner, minlength=groups).to(contributions.dtype)
    weights = curvature.bootstrap_weights(groups, cfg.r_med_bootstrap, cfg.seed, torch.device("cpu"))
    replicates = curvature.bootstrap_r_med(means, weights)
    return curvature.basic_bootstrap_interval(estimate, replicates, cfg.r_med_confidence)


def markdown_table(result: dict[str, Any]) -> str:
    """The docs/rmed.md table: one line per estimator setting (subset rows: over the subset seeds,
    the median and the worst of each error)."""
    lines = [
        "| estimator | setting | products (these tensors) | s (these tensors) | products (whole model) "
        "| s (whole model) | rel. error per tensor, median / max | rel. error of the median over tensors "
        "| interval covers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    exact = result["exact"]
    lines.append(
        f"| exact | | {exact['products']} | {exact['seconds']:.0f} | {exact['model_products']} "
        f"| {exact['model_seconds']:.0f} | 0 / 0 | 0 | |"
    )
    rows = result["rows"]
    settings = list(dict.fromkeys((row["method"], row.get("probes", row.get("subset_size"))) for row in rows))
    for method, value in settings:
        group = [row for row in rows if (row["method"], row.get("probes", row.get("subset_size"))) == (method, value)]
        first = group[0]
        setting = f"{value} probes" if "probes" in first else f"{value} entries/tensor, {len(group)} seeds"
        typical = statistics.median(row["rel_error_per_tensor_median"] for row in group)
        worst = max(row["rel_error_per_tensor_max"] for row in group)
        summary = [row["rel_error_summary"] for row in group if "rel_error_summary" in row]
        summary_text = "" if not summary else f"{statistics.median(summary):.1%}"
        if len(summary) > 1:
            summary_text += f" (max {max(summary):.1%})"
        covers = f"{first['interval_covers']:.0%}" if "interval_covers" in first else ""
        lines.append(
            f"| {method} | {setting} | {first['products']} | {first['seconds']:.0f} | {first['model_products']} "
            f"| {first['model_seconds']:.0f} | {typical:.1%} / {worst:.1%} | {summary_text} | {covers} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps before measuring (preset tiny: 200)")
    parser.add_argument("--tensors", default=",".join(DEFAULT_TENSORS), help="comma-separated names, or all")
    parser.add_argument("--probes", default="20,100,400,1600")
    parser.add_argument("--per-tensor-probes", default="20,100,400")
    parser.add_argument("--subset-sizes", default="32,128,512")
    parser.add_argument("--subset-seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", metavar="JSON", help="print the docs table of a saved result and exit")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the run")
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table(json.loads(Path(args.markdown).read_text())))
        return
    torch.set_num_threads(args.threads)

    from memexp.metrics import curvature
    from memexp.metrics.block_hvp import HessianOperator, ProbeLoss, curvature_mode, split_batch

    run, train_seconds = trained_run(args.steps, args.overrides)
    cfg = run.cfg.metrics
    x, y = run.eval_sets["train"]
    batch = (x[: cfg.probe_size], y[: cfg.probe_size])
    device = x.device
    result: dict[str, Any] = {"steps": args.steps, "train_seconds": train_seconds, "probe_batch": list(batch[0].shape)}
    with curvature_mode(run.model):
        probe = ProbeLoss(run.model, run.task.loss, split_batch(*batch, cfg.probe_chunk))
        operator = HessianOperator(probe, "autodiff", max_columns=cfg.max_columns)
        offsets, sizes, order = {}, {}, {}
        position = 0
        for index, (name, param) in enumerate(zip(probe.names, probe.params)):
            offsets[name], sizes[name], order[name] = position, param.numel(), index
            position += param.numel()
        names = list(probe.names) if args.tensors == "all" else args.tensors.split(",")
        unknown = [n for n in names if n not in offsets]
        if unknown:
            raise SystemExit(f"unknown tensors {unknown}; the model has {list(offsets)}")
        ndims = dict(zip(probe.names, (p.ndim for p in probe.params)))
        weight_names = [n for n in names if ndims[n] >= 2]
        all_tensors = [n for n in probe.names if sizes[n] >= 2]
        result.update(
            {
                "params": probe.dim,
                "tensors": {n: sizes[n] for n in names},
                "probe_loss": float(probe.loss_and_gradient()[0]),
            }
        )

        # Exact diagonals, timed: the unit of cost.
        exact_diagonals: dict[str, Tensor] = {}
        started, started_cpu = time.perf_counter(), time.process_time()
        for name in names:
            exact_diagonals[name] = curvature.exact_diagonal_slice(
                operator.matmat, probe.dim, offsets[name], offsets[name] + sizes[name], device, block=cfg.max_columns
            ).cpu()
        exact_seconds, exact_cpu = time.perf_counter() - started, time.process_time() - started_cpu
        exact_products = sum(sizes[n] for n in names)
        per_product = exact_seconds / exact_products
        exact = {n: curvature.r_med(d).value for n, d in exact_diagonals.items()}
        result.update(
            {
                "seconds_per_product": per_product,
                "cpu_seconds_per_product": exact_cpu / exact_products,
                "exact": {
                    "seconds": exact_seconds,
                    "products": exact_products,
                    "model_products": probe.dim,
                    "model_seconds": probe.dim * per_product,
                    "r_med": exact,
                    "negative_fraction": {n: float((d < 0).double().mean()) for n, d in exact_diagonals.items()},
                },
            }
        )
        rows: list[dict[str, Any]] = []

        # Hutchinson over all parameters: one probe sequence, its prefixes.
        probe_counts = [int(k) for k in args.probes.split(",")]
        measured_rows = torch.cat([torch.arange(offsets[n], offsets[n] + sizes[n]) for n in names]).to(device)
        started = time.perf_counter()
        joint = probe_contributions(
            operator.matmat, probe.dim, measured_rows, max(probe_counts), cfg.seed, cfg.max_columns, device
        ).cpu()
        result["hutchinson_seconds_measured"] = time.perf_counter() - started
        split = dict(zip(names, joint.split([sizes[n] for n in names])))
        for count in probe_counts:
            estimates, intervals = {}, {}
            for name in names:
                estimates[name] = curvature.r_med(split[name][:, :count].mean(dim=1)).value
                intervals[name] = bootstrap_interval(split[name][:, :count].double(), estimates[name], cfg)
            rows.append(
                summarise(
                    "hutchinson",
                    {"probes": count},
                    estimates,
                    exact,
                    weight_names,
                    count,
                    count,
                    per_product,
                    intervals,
                )
            )

        # Hutchinson one tensor at a time (memexp seeds tensor i's probes with seed * 1_000_003 + i + 1).
        per_tensor_counts = [int(k) for k in args.per_tensor_probes.split(",")]
        own: dict[str, Tensor] = {}
        for name in names:
            support = (offsets[name], offsets[name] + sizes[name])
            own[name] = probe_contributions(
                operator.matmat,
                probe.dim,
                torch.arange(*support, device=device),
                max(per_tensor_counts),
                cfg.seed * 1_000_003 + order[name] + 1,
                cfg.max_columns,
                device,
                support,
            ).cpu()
        for count in per_tensor_counts:
            estimates = {n: curvature.r_med(own[n][:, :count].mean(dim=1)).value for n in names}
            intervals = {n: bootstrap_interval(own[n][:, :count].double(), estimates[n], cfg) for n in names}
            rows.append(
                summarise(
                    "hutchinson_per_tensor",
                    {"probes": count},
                    estimates,
                    exact,
                    weight_names,
                    count * len(names),
                    count * len(all_tensors),
                    per_product,
                    intervals,
                )
            )

        # Exact entries at a fixed random subset of each tensor: read off the exact diagonal.
        for size in [int(k) for k in args.subset_sizes.split(",")]:
            for seed in range(args.subset_seeds):
                estimates = {}
                for n in names:
                    coordinates = curvature.subset_indices(sizes[n], size, seed, order[n])
                    estimates[n] = curvature.r_med(exact_diagonals[n][coordinates]).value
                rows.append(
                    summarise(
                        "subset",
                        {"subset_size": size, "seed": seed},
                        estimates,
                        exact,
                        weight_names,
                        sum(min(size, sizes[n]) for n in names),
                        sum(min(size, sizes[n]) for n in all_tensors),
                        per_product,
                    )
                )
        result["rows"] = rows
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
