"""Cost of a 16-member population (hydra/launcher=batched) against one ordinary run.

For each model, one run (memexp.train.build_run + train, the basic launcher's path without Hydra's
start-up) and one population of ``--members`` jobs of the same sweep (seeds 0..N-1, two learning
rates) train the same config in this process, alternating ``--rounds`` times so machine noise hits
both alike; the medians give ``ratio_vs_one_run`` = population wall time / one run's. Both write
their local logs (metrics.jsonl, summary.json) to a temporary directory, evaluate every
``trainer.eval_every`` steps and checkpoint at the end, as a real job does.

``steps_only_ratio_vs_one_run``: the population's training steps alone (batches, forward, backward,
optimizer; no evaluation, logging or checkpoints) over one run's full wall time: the floor of
``ratio_vs_one_run`` that the arithmetic of 16 members sets on this machine.

``rss_ratio_vs_one_run`` (MLP): peak resident memory of a process training the population over
one training a single run (each in a fresh subprocess; the import of torch is part of both).

``--cli`` adds ``cli``: what a user waits for, ``memexp train -m seed='range(N)' model=mlp`` with
the basic launcher (N separate runs in one process) and with ``hydra/launcher=batched``, each one
command from start-up to exit (Hydra composes every job's config, writes its run dir, and so on).

Goals (issue 14, 2 CPU cores): MLP <= 3x (600 steps), CNN and tiny ViT <= 8x, MLP memory <= 4x.
``--models mlp_twin`` times the heavy-ball twin (``optimizer=sgd_memoryless``, one Hessian-vector
product per step by finite differences) on the default MLP, population against one twin run.
``--models vit_2block`` adds the ViT of ``experiment=lion_vs_adamw size=tiny`` (2 blocks, 64 wide,
AdamW, 300 steps): on a CPU its matrix products (1,088 rows a batch) are already compute-bound as
one run, so a population there is about as fast as separate runs.

    python scripts/bench_batched.py [--members 16] [--rounds 3] [--vit-steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from memexp.batched.population import Member, Population
from memexp.config import Progress
from memexp.logging import LocalLogger
from memexp.logging.progress import ProgressReporter
from memexp.rundir import compose_sweep, job_key
from memexp.train import build_run, check_config, train

COMMON = ["logger=none", "metrics=none", "trainer.progress=off"]
# Minutes of arithmetic per population on a CPU: measured once instead of --rounds times.
COMPUTE_BOUND = ("vit_tiny", "vit_2block")


def sweep_configs(model_overrides: list[str], members: int, lrs: str = "0.05,0.1") -> list:
    """The jobs of ``train -m seed=range(members/2) optimizer.lr=<two values> <model>``."""
    seeds = f"seed=range({(members + 1) // 2})"
    sweep = compose_sweep([*COMMON, *model_overrides, seeds, f"optimizer.lr={lrs}"])
    return [job.config for job in sweep.jobs][:members]


def time_single(cfg, root: Path) -> float:
    run_dir = Path(tempfile.mkdtemp(dir=root))
    started = time.perf_counter()
    run = build_run(check_config(cfg))
    train(run, run_dir, [LocalLogger(run_dir)], ProgressReporter(run.max_steps, Progress.off))
    return time.perf_counter() - started


def time_population(configs: list, root: Path) -> float:
    started = time.perf_counter()
    members = []
    for cfg in configs:
        run_dir = Path(tempfile.mkdtemp(dir=root))
        members.append(Member(run_cfg=check_config(cfg), run_dir=run_dir, key=job_key(cfg), cfg=cfg))
    summaries = Population(members).train()
    assert all(s["status"] in ("finished", "diverged") for s in summaries), summaries
    # A twin that diverged stops being stepped: its population would be timed doing less work.
    assert all(math.isfinite(s.get("twin/distance", 0.0)) for s in summaries), "a twin diverged: lower the lrs"
    return time.perf_counter() - started


def time_population_steps(configs: list, root: Path) -> float:
    """The population's training arithmetic alone: its steps (batches, forward, backward, optimizer)
    without evaluation, logging or checkpoints, as many as a run takes. Over one run's full wall time
    this is the floor of ``ratio_vs_one_run`` for this model on this machine."""
    members = [
        Member(run_cfg=check_config(cfg), run_dir=Path(tempfile.mkdtemp(dir=root)), key=job_key(cfg), cfg=cfg)
        for cfg in configs
    ]
    population = Population(members)
    population.train_step()  # first-call costs out of the timing
    started = time.perf_counter()
    for _ in range(population.max_steps):
        population.train_step()
    return time.perf_counter() - started


def time_cli(members: int, threads: int) -> dict[str, float]:
    """Wall time of ``memexp train -m`` over ``members`` seeds of the default MLP run, per launcher."""
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for launcher in ("basic", "batched"):
            command = [
                sys.executable, "-m", "memexp.cli", "train", "-m", f"seed=range({members})", "model=mlp",
                *COMMON, f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp}/{launcher}",
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            seconds[launcher] = time.perf_counter() - started
    return {
        "basic_launcher_s": round(seconds["basic"], 2),
        "batched_launcher_s": round(seconds["batched"], 2),
        "speedup": round(seconds["basic"] / seconds["batched"], 2),
    }


def peak_rss_mb(which: str, members: int, threads: int) -> float:
    """Peak RSS (MiB) of a fresh process that trains the MLP once or as a population."""
    command = [sys.executable, __file__, "--members", str(members), "--threads", str(threads), "--rss-probe", which]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())


def rss_probe(which: str, members: int) -> None:
    configs = sweep_configs(["model=mlp"], members)
    with tempfile.TemporaryDirectory() as tmp:
        time_single(configs[0], Path(tmp)) if which == "single" else time_population(configs, Path(tmp))
    print(peak_rss_of_this_process_mib())


def peak_rss_of_this_process_mib() -> float:
    """VmHWM: this process's own peak (getrusage's ru_maxrss keeps the parent's across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cnn-steps", type=int, default=600)
    parser.add_argument("--vit-steps", type=int, default=10, help="the tiny ViT (5.3M parameters) is compute-bound")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads for both (2: the issue's 2 cores; needs an otherwise idle machine, where another "
        "busy process makes two threads spin-wait, so use 1 there)",
    )
    parser.add_argument(
        "--models",
        default="mlp,cnn,vit_tiny",
        help="comma-separated subset of mlp, mlp_twin (optimizer=sgd_memoryless), mlp_twins_alongside "
        "(trainer.twin and trainer.twin_uncorrected), cnn, vit_tiny, vit_2block (experiment=lion_vs_adamw "
        "size=tiny's ViT)",
    )
    parser.add_argument("--cli", action="store_true", help="also time the memexp train -m command, basic vs batched")
    parser.add_argument("--rss-probe", choices=("single", "population"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_probe:
        rss_probe(args.rss_probe, args.members)
        return
    models = {
        "mlp": ["model=mlp"],  # the default run: 600 steps
        # The heavy-ball twin on the default MLP: one H·v per step (a second forward-backward).
        "mlp_twin": ["model=mlp", "optimizer=sgd_memoryless"],
        # trainer.twin's twins alongside the default MLP run (heavy ball): the corrected twin (two
        # forward-backwards a step) and the uncorrected copy (one), at lrs where neither diverges.
        "mlp_twins_alongside": ["model=mlp", "trainer.twin=true", "trainer.twin_uncorrected=true"],
        "cnn": ["model=cnn", f"trainer.max_steps={args.cnn_steps}"],
        "vit_tiny": ["model=vit_tiny", f"trainer.max_steps={args.vit_steps}", f"trainer.eval_every={args.vit_steps}"],
        # The ViT of experiment=lion_vs_adamw size=tiny (and adamw_beta2): 2 blocks, 64 wide, AdamW,
        # 300 steps with a cosine schedule, evaluated every 100.
        "vit_2block": [
            "model=vit_tiny",
            "model.depth=2",
            "model.embed_dim=64",
            "model.num_heads=2",
            "optimizer=adamw",
            "trainer.max_steps=300",
            "trainer.eval_every=100",
            "trainer.lr_schedule=cosine",
            "trainer.warmup_steps=20",
        ],  # fmt: skip
    }
    learning_rates = {"vit_2block": "1e-3,3e-3", "mlp_twin": "0.005,0.01", "mlp_twins_alongside": "0.002,0.005"}
    results: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            overrides = models[name]
            lrs = learning_rates.get(name, "0.05,0.1")
            configs = sweep_configs(overrides, args.members, lrs)
            # Untimed warm-up of both paths (lazy imports, allocator, kernels' first calls).
            warm = sweep_configs([*overrides, "trainer.max_steps=3", "trainer.eval_every=3"], args.members, lrs)
            time_single(warm[0], root), time_population(warm, root)
            single, population, steps_only = [], [], []
            for _ in range(args.rounds if name not in COMPUTE_BOUND else 1):
                single.append(time_single(configs[0], root))
                population.append(time_population(configs, root))
                steps_only.append(time_population_steps(configs, root))
            one, many, floor = statistics.median(single), statistics.median(population), statistics.median(steps_only)
            results[name] = {
                "steps": configs[0].trainer.max_steps,
                "one_run_s": round(one, 3),
                "population_s": round(many, 3),
                "ratio_vs_one_run": round(many / one, 2),
                "throughput_vs_separate_runs": round(args.members * one / many, 2),
                # The population's training steps alone over one run's wall time: below this no
                # launcher change can bring ratio_vs_one_run; above it is evaluation, logging, I/O.
                "steps_only_ratio_vs_one_run": round(floor / one, 2),
            }
    single_rss = peak_rss_mb("single", args.members, args.threads)
    population_rss = peak_rss_mb("population", args.members, args.threads)
    results.setdefault("mlp", {}).update(
        single_peak_rss_mib=round(single_rss, 1),
        population_peak_rss_mib=round(population_rss, 1),
        rss_ratio_vs_one_run=round(population_rss / single_rss, 2),
    )
    report: dict[str, object] = {"members": args.members, "threads": torch.get_num_threads(), "models": results}
    if args.cli:
        report["cli"] = time_cli(args.members, args.threads)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
