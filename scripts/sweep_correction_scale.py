"""Where is a memoryless-corrected optimizer stable? A sweep of ``correction_scale`` at practical
learning rates, for the documentation of ``correction_scale`` (docs/optimizers.md).

For each twin (sgd_memoryless, adamw_memoryless, lion_memoryless) and each scale, train memexp's
model on memexp's data (defaults: the MLP on digits, the default trainer's lr schedule) and report
the final training loss of the last 50 steps, the held-out loss, and the largest and median
``correction_ratio`` (‖h·M‖ / ‖plain step‖; for Lion the correction's size inside the sign relative
to ‖g‖) seen during the run. A run is *stable* when its loss stays finite and ends no worse than
1.1x the uncorrected run (scale 0). Prints one JSON object.

    python scripts/sweep_correction_scale.py [--steps 300] [--model mlp] [--scales 0,0.01,0.03,0.1,0.3,1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch


def run_one(optimizer: str, scale: float, steps: int, model: str, extra: list[str]) -> dict[str, float | str]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from memexp.train import build_run, check_config, config_dir, evaluate_gap, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    overrides = [
        f"optimizer={optimizer}",
        f"optimizer.correction_scale={scale}",
        f"optimizer.correction={'true' if scale != 0 else 'false'}",
        f"model={model}",
        f"trainer.max_steps={steps}",
        "trainer.eval_every=0",
        "logger=none",
        *extra,
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run = build_run(check_config(cfg))
    ratios, losses = [], []
    x = y = None

    def closure(create_graph: bool = False) -> torch.Tensor:
        run.optimizer.zero_grad(set_to_none=True)
        loss = run.task.loss(run.forward(x), y)
        loss.backward(create_graph=create_graph)
        return loss

    run.model.train()
    for _ in range(steps):
        x, y = next(run.batches)
        loss = run.optimizer.step(closure)
        run.scheduler.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            return {"status": "diverged", "step": len(losses)}
        if scale != 0:
            ratios.append(run.optimizer.last_stats["correction_ratio"])
    final = evaluate_gap(run)
    result: dict[str, float | str] = {
        "status": "finished",
        "train_loss_last50": statistics.fmean(losses[-50:]),
        "val_loss": final["val/loss"],
        "val_acc": final["val/acc"],
    }
    if ratios:
        result["correction_ratio_max"] = max(ratios)
        result["correction_ratio_median"] = statistics.median(ratios)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--scales", default="0,0.01,0.03,0.1,0.3,1")
    parser.add_argument("--optimizers", default="sgd_memoryless,adamw_memoryless,lion_memoryless")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. optimizer.lr=0.05")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    report: dict[str, dict] = {}
    for optimizer in args.optimizers.split(","):
        runs = {
            str(s): run_one(optimizer, s, args.steps, args.model, [f"seed={args.seed}", *args.overrides])
            for s in scales
        }
        baseline = runs.get("0.0", {}).get("train_loss_last50")
        stable = [
            s
            for s, r in runs.items()
            if r["status"] == "finished"
            and math.isfinite(r["train_loss_last50"])
            and (baseline is None or r["train_loss_last50"] <= 1.1 * baseline + 1e-3)
        ]
        report[optimizer] = {"runs": runs, "stable_scales": stable}
    print(json.dumps({"steps": args.steps, "model": args.model, "optimizers": report}, indent=1))


if __name__ == "__main__":
    main()
