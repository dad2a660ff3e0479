"""Throughput of the model presets and of their data paths; prints one JSON object.

For each preset: the data path alone (batches/s the on-device loader delivers, augmentation
included), a bare training loop (forward, loss, backward, AdamW step on batches drawn ahead of time:
the nanoGPT-equivalent upper bound), and memexp's own loop (``memexp.train.train`` with its closure,
scheduler, loss accumulation and logging every 10 steps) on the same model, data and precision, timed
between two of its log steps. Reported: examples/s (images) or tokens/s (text), the loader's headroom
(loader batches/s over training steps/s: > 1 means the loader never limits training) and memexp's loop
overhead (bare over memexp throughput). ``--compile`` and ``--precision bf16`` apply to both loops.

Image presets train on CIFAR-10-shaped data (3x32x32, 10 classes, random crop + flip on the device)
built in memory, so no download is needed; text presets train on the offline stdlib corpus
(byte-level) or, with ``--vocab 50257``, on random tokens with the GPT-2 vocabulary size.

    python scripts/bench_models.py                                   # CPU-sized defaults
    python scripts/bench_models.py --device cuda --precision bf16 --compile \\
        --presets gpt_small --batch-size 12 --block-size 1024 --vocab 50257 --steps 30
    python scripts/bench_models.py --device cuda --presets resnet18 --batch-size 512 --steps 50
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memexp import train as memexp_train
from memexp.config import LoggerConfig, MetricsConfig, Precision, Progress, TrainerConfig, register_configs
from memexp.data import DATASETS
from memexp.data.augment import RandomCropFlip
from memexp.data.base import DataConfig, DataSpec, InMemoryClassification
from memexp.data.text import StdlibTextConfig, TokenBlocks
from memexp.optim.adamw import AdamWConfig

CONF = str(Path(__file__).resolve().parents[1] / "conf")
IMAGE_PRESETS = ("vit_tiny", "vit_small", "resnet18", "preact_resnet18", "resnet20", "resnet56")
TEXT_PRESETS = ("gpt_nano", "gpt_mini", "gpt_small")


@dataclass
class BenchDataConfig(DataConfig):
    """The data a benchmark run trains on: CIFAR-shaped images or a token stream, built in memory."""

    name: str = "bench_synthetic"
    kind: str = "image"
    examples: int = 4096
    block_size: int = 256
    vocab: int = 256
    data_root: str = ""


@DATASETS.register("bench_synthetic")
def build_bench_data(cfg: BenchDataConfig, device: torch.device) -> Any:
    generator = torch.Generator().manual_seed(0)
    if cfg.kind == "image":
        images = torch.randint(0, 256, (cfg.examples, 3, 32, 32), generator=generator).float().div_(255)
        mean, std = images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))
        images = ((images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).to(device)
        labels = torch.randint(0, 10, (cfg.examples,), generator=generator).to(device)
        half = cfg.examples // 2
        spec = DataSpec("cifar10_shaped", "classification", (3, 32, 32), 10)
        return InMemoryClassification(
            spec,
            (images, labels),
            (images[:half], labels[:half]),
            (images[half:], labels[half:]),
            augment=RandomCropFlip(4, True, (-mean / std).to(device)),
        )
    if cfg.vocab == 256:
        stdlib = StdlibTextConfig(root=cfg.data_root, block_size=cfg.block_size, eval_blocks=4)
        return DATASETS.build("stdlib_text", stdlib, device)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab, 4_000_000).astype(np.uint16)
    streams = {"train": tokens[:3_200_000], "val": tokens[3_200_000:3_600_000], "test": tokens[3_600_000:]}
    return TokenBlocks("random_tokens", streams, cfg.vocab, cfg.block_size, device, eval_blocks=4)


def model_config(preset: str) -> Any:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={preset}"])
    return OmegaConf.to_object(cfg.model)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """A metric logger that only records when each logged step happened."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        if "train/batch_loss" in metrics:  # .item() on the loss already synchronised the device
            self.times[step] = time.perf_counter()

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def bench_preset(preset: str, args: argparse.Namespace, device: torch.device, data_root: str) -> dict[str, Any]:
    kind = "text" if preset.startswith("gpt") else "image"
    batch_size = args.batch_size or (8 if kind == "text" else 64)
    trainer = TrainerConfig(
        max_steps=args.warmup + args.steps,
        batch_size=batch_size,
        eval_every=0,
        eval_examples=8,
        eval_batch_size=8,
        log_every=args.warmup,
        checkpoint_every=0,
        device=str(device),
        precision=Precision(args.precision),
        compile=args.compile,
        progress=Progress.off,
    )
    data_cfg = BenchDataConfig(kind=kind, block_size=args.block_size, vocab=args.vocab, data_root=data_root)
    run_cfg = memexp_train.RunConfig(
        seed=0,
        optimizer=AdamWConfig(lr=1e-4),
        model=model_config(preset),
        data=data_cfg,
        trainer=trainer,
        logger=LoggerConfig(),
        metrics=MetricsConfig(),
    )
    run = memexp_train.build_run(run_cfg)
    params = sum(p.numel() for p in run.model.parameters())
    per_batch = batch_size * (args.block_size if kind == "text" else 1)

    # 1. The data path alone.
    for _ in range(3):
        next(run.batches)
    synchronize(device)
    started = time.perf_counter()
    loader_batches = 0
    while time.perf_counter() - started < args.loader_seconds:
        next(run.batches)
        loader_batches += 1
    synchronize(device)
    loader_rate = loader_batches / (time.perf_counter() - started)

    # 2. A bare loop on batches drawn ahead of time (nanoGPT's loop minus its data loading).
    batches = [next(run.batches) for _ in range(min(args.steps, 8))]
    model, task, optimizer = run.forward, run.task, run.optimizer

    def bare_step(x: torch.Tensor, y: torch.Tensor) -> None:
        with run.autocast():
            loss = task.loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for step in range(args.warmup):
        bare_step(*batches[step % len(batches)])
    synchronize(device)
    started = time.perf_counter()
    for step in range(args.steps):
        bare_step(*batches[step % len(batches)])
    synchronize(device)
    bare_rate = args.steps / (time.perf_counter() - started)

    # 3. memexp's loop (fresh run: same model and optimizer state as the bare loop started from).
    run = memexp_train.build_run(run_cfg)
    clock = StepClock(device)
    with tempfile.TemporaryDirectory() as run_dir:
        memexp_train.train(run, Path(run_dir), [clock])
    first, last = args.warmup, args.warmup + args.steps
    memexp_rate = args.steps / (clock.times[last] - clock.times[first])

    unit = "tokens_per_s" if kind == "text" else "images_per_s"
    return {
        "preset": preset,
        "parameters": params,
        "batch_size": batch_size,
        **({"block_size": args.block_size, "vocab": args.vocab} if kind == "text" else {"image": [3, 32, 32]}),
        "loader_batches_per_s": round(loader_rate, 2),
        f"bare_loop_{unit}": round(bare_rate * per_batch, 1),
        f"memexp_loop_{unit}": round(memexp_rate * per_batch, 1),
        "memexp_steps_per_s": round(memexp_rate, 3),
        "loader_headroom": round(loader_rate / memexp_rate, 1),
        "memexp_loop_overhead": round(bare_rate / memexp_rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--presets",
        default="vit_tiny,resnet20,resnet18,gpt_nano,gpt_mini",
        help=f"comma-separated, from {IMAGE_PRESETS + TEXT_PRESETS}",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch-size", type=int, default=0, help="0: 64 images or 8 text blocks")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=256, help="256: the stdlib bytes; else random tokens")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, caches)")
    parser.add_argument("--loader-seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    parser.add_argument("--data-root", default="", help="token cache folder (default: a temporary one)")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = memexp_train.resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory() as scratch:
        data_root = args.data_root or scratch
        results = [bench_preset(p.strip(), args, device, data_root) for p in args.presets.split(",") if p.strip()]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        json.dumps(
            {
                "device": name,
                "torch": torch.__version__,
                "precision": args.precision,
                "compile": args.compile,
                "steps": args.steps,
                "results": results,
            },
            indent=1,
        )
    )
    assert all(math.isfinite(r["memexp_steps_per_s"]) for r in results)


if __name__ == "__main__":
    main()
