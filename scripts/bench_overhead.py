"""Overhead of memexp's training loop over a bare PyTorch loop.

Same model (the default MLP), same data (digits, on the device), same optimizer (SGD + momentum,
constant lr) and batch size, N steps each, in one process, alternating memexp / bare, repeated.
memexp runs with its local logging on (metrics.jsonl every `log_every` steps, the LR scheduler, the
closure protocol, checkpointing only at the end) and evaluation off until the final evaluation.
Fixed costs (the final evaluation and checkpoint) are removed by timing two lengths and taking the
per-step slope; the JSON also reports the raw totals. Prints one JSON object; `ratio` is
memexp's per-step time over the bare loop's (goal: <= 1.05).

    python scripts/bench_overhead.py [--steps 2000] [--repeats 5] [--wandb]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def memexp_run(steps: int, seed: int, wandb: bool, workdir: Path) -> float:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from memexp.config import Progress
    from memexp.logging import LocalLogger
    from memexp.logging.progress import ProgressReporter
    from memexp.train import build_run, check_config, config_dir, register_configs, train

    register_configs()
    GlobalHydra.instance().clear()
    overrides = [
        f"trainer.max_steps={steps}",
        "trainer.eval_every=0",
        "trainer.lr_schedule=constant",
        "trainer.warmup_steps=0",
        f"seed={seed}",
        "logger=wandb" if wandb else "logger=none",
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run = build_run(check_config(cfg))
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    loggers = [LocalLogger(run_dir)]
    if wandb:
        from memexp.logging.wandb_logger import WandbLogger

        loggers.append(WandbLogger(run.cfg.logger.wandb, run_dir, {}, run_dir.name, "bench"))
    started = time.perf_counter()
    train(run, run_dir, loggers, ProgressReporter(run.max_steps, Progress.off))
    return time.perf_counter() - started


def bare_run(steps: int, seed: int) -> float:
    from memexp.data.digits import DigitsConfig, build_digits
    from memexp.models.mlp import MLP

    torch.manual_seed(seed)
    data = build_digits(DigitsConfig(), torch.device("cpu"))
    x, y = data.train
    model = MLP(64, [128, 128], 10, "relu", 0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    # ---- the bare loop ----
    order, position = torch.randperm(len(x), generator=generator), 0
    for _ in range(steps):
        if position + 64 > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position : position + 64]
        position += 64
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    final = loss.item()
    # ---- end ----
    assert final == final  # keep the loss alive; NaN would mean a broken comparison
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--wandb", action="store_true", help="also log to W&B (offline) in memexp's loop")
    parser.add_argument("--flush-denormal", action="store_true", help="flush denormal floats to zero in both loops")
    args = parser.parse_args()
    torch.set_num_threads(1)  # both loops on one thread: less noise from the other core
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    short = args.steps // 4
    times: dict[str, list[float]] = {"memexp_long": [], "memexp_short": [], "bare_long": [], "bare_short": []}
    with tempfile.TemporaryDirectory() as workdir:
        memexp_run(50, 0, args.wandb, Path(workdir))  # warm-up: imports, allocator, first compose
        bare_run(50, 0)
        for repeat in range(args.repeats):
            for steps, label in ((args.steps, "long"), (short, "short")):
                times[f"memexp_{label}"].append(memexp_run(steps, repeat, args.wandb, Path(workdir)))
                times[f"bare_{label}"].append(bare_run(steps, repeat))
    per_step = {
        name: (statistics.median(times[f"{name}_long"]) - statistics.median(times[f"{name}_short"]))
        / (args.steps - short)
        for name in ("memexp", "bare")
    }
    print(
        json.dumps(
            {
                "steps": args.steps,
                "repeats": args.repeats,
                "wandb": args.wandb,
                "memexp_step_s": per_step["memexp"],
                "bare_step_s": per_step["bare"],
                "ratio": per_step["memexp"] / per_step["bare"],
                "memexp_total_s_median": statistics.median(times["memexp_long"]),
                "bare_total_s_median": statistics.median(times["bare_long"]),
                "total_ratio": statistics.median(times["memexp_long"]) / statistics.median(times["bare_long"]),
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
