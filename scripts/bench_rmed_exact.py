"""The cost of an exact R_med pass, old path vs new, side by side (docs/rmed.md). Prints one JSON object.

    OMP_NUM_THREADS=1 python scripts/bench_rmed_exact.py [--steps 200] [--entries 256] [--columns 16] > exact.json

Trains ``experiment=rmed_adam_vs_sgd size=tiny optimizer=adamw`` for ``--steps`` steps with metrics
off, takes the probe batch the metrics use (16 blocks of 64 tokens, eval mode, math attention, fp32),
then for each of ``--tensors`` (default: the preset's two ``*.attn.c_proj.weight``) computes the same
``--entries`` diagonal entries both ways:

- ``full_operator``: unit vectors through the full-parameter Hessian operator (curvlinops,
  forward-over-reverse over all 72k parameters, ``--columns`` vectors per vmap): the path
  ``metrics.r_med_method=exact`` took before;
- ``tensor_block``: unit vectors through the tensor's own Hessian block (``TensorHessian``: the
  tensor the only differentiable leaf, the graph of its gradient built once, ``--columns`` vectors per
  batched double backward): the path it takes now;

and reports seconds per product for each (wall and CPU), the speed-up, the largest difference
between the two diagonals relative to the largest entry, and the new path's time for the whole tensor
with its R_med. The old path on a whole 2,304-entry tensor takes minutes, hence ``--entries``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from bench_rmed_estimators import trained_run

DEFAULT_TENSORS = "blocks.0.attn.c_proj.weight,blocks.1.attn.c_proj.weight"


def timed(function: Any, *args: Any) -> tuple[Any, float, float]:  # noqa: ANN401
    """``function(*args)`` with its wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def whole_diagonal(operator: Any, index: int, size: int, columns: int) -> torch.Tensor:  # noqa: ANN401
    from memexp.metrics import curvature
    from memexp.metrics.block_hvp import TensorHessian

    block = TensorHessian(operator, index)
    return curvature.exact_diagonal_slice(block.matmat, size, 0, size, torch.device("cpu"), block=columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps before measuring (preset tiny: 200)")
    parser.add_argument("--tensors", default=DEFAULT_TENSORS, help="comma-separated parameter names")
    parser.add_argument("--entries", type=int, default=256, help="diagonal entries per tensor for the side by side")
    parser.add_argument("--columns", type=int, default=16, help="vectors per product call (metrics.max_columns)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from memexp.metrics import curvature
    from memexp.metrics.block_hvp import HessianOperator, ProbeLoss, TensorHessian, curvature_mode, split_batch

    run, train_seconds = trained_run(args.steps, ["metrics.r_med_at_steps=[]", *args.overrides])
    cfg = run.cfg.metrics
    x, y = run.eval_sets["train"]
    batch = (x[: cfg.probe_size], y[: cfg.probe_size])
    result: dict[str, Any] = {
        "steps": args.steps,
        "train_seconds": train_seconds,
        "probe_batch": list(batch[0].shape),
        "threads": args.threads,
        "columns": args.columns,
        "tensors": {},
    }
    with curvature_mode(run.model):
        probe = ProbeLoss(run.model, run.task.loss, split_batch(*batch, cfg.probe_chunk))
        operator = HessianOperator(probe, "autodiff", max_columns=args.columns)
        result["params"] = probe.dim
        offsets, position = {}, 0
        for index, (name, param) in enumerate(zip(probe.names, probe.params)):
            offsets[name] = (index, position, param.numel())
            position += param.numel()
        for name in args.tensors.split(","):
            if name not in offsets:
                raise SystemExit(f"bench_rmed_exact: --tensors: unknown tensor {name!r}; the model has {list(offsets)}")
            index, start, size = offsets[name]
            count = min(args.entries, size)
            diagonal = curvature.exact_diagonal_slice
            old, old_wall, old_cpu = timed(
                diagonal, operator.matmat, probe.dim, start, start + count, x.device, torch.float32, args.columns
            )
            block, setup_wall, _ = timed(TensorHessian, operator, index)
            new, new_wall, new_cpu = timed(
                diagonal, block.matmat, size, 0, count, x.device, torch.float32, args.columns
            )
            # The whole tensor the way a metrics pass does it: a fresh block (its graph) and every entry.
            whole, whole_wall, whole_cpu = timed(whole_diagonal, operator, index, size, args.columns)
            torch.testing.assert_close(whole[:count], new)  # the same products, whatever the batch
            result["tensors"][name] = {
                "entries": count,
                "full_operator_s_per_product": old_wall / count,
                "full_operator_cpu_s_per_product": old_cpu / count,
                "tensor_block_s_per_product": (setup_wall + new_wall) / count,
                "tensor_block_cpu_s_per_product": new_cpu / count,
                "speedup_wall": old_wall / (setup_wall + new_wall),
                "max_relative_difference": float((old - new).abs().max() / old.abs().max()),
                "whole_tensor_entries": size,
                "whole_tensor_s": whole_wall,
                "whole_tensor_cpu_s": whole_cpu,
                "r_med": curvature.r_med(whole).value,
            }
    tensors = result["tensors"].values()
    result["speedup_wall"] = sum(t["full_operator_s_per_product"] * t["entries"] for t in tensors) / sum(
        t["tensor_block_s_per_product"] * t["entries"] for t in tensors
    )
    result["exact_pass_s"] = sum(t["whole_tensor_s"] for t in tensors)
    result["exact_pass_s_before"] = sum(t["full_operator_s_per_product"] * t["whole_tensor_entries"] for t in tensors)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
