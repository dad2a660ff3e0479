"""Data-parallel training on N processes of one node (``trainer.devices=N``).

`memexp train trainer.devices=N ...` relaunches itself through torchrun
(``python -m torch.distributed.run --standalone --nproc_per_node=N -m memexp.cli train ...`` with the
same overrides and the same run dir); each process is one rank: NCCL on GPUs (one GPU per rank),
gloo on CPU. Every rank draws the same global batch from the same seeded iterator and trains on its
contiguous 1/N slice; DDP averages the gradients, so the update equals the single-process update
on the global batch (up to float summation order). Evaluation is sharded and its sums all-reduced;
only rank 0 logs and checkpoints. BatchNorm statistics stay per rank (no SyncBatchNorm).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from memexp.errors import require


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> None:
    if launched_by_torchrun() and not is_active():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    """Leave the process group explicitly: a gloo group left to interpreter exit can abort its
    process ("terminate called without an active exception": a worker thread still joinable), which
    torchrun reports as a failed rank although training ended (seen once in CI on 2 loaded cores)."""
    if is_active():
        dist.barrier()  # no rank tears the group down while another still uses it
        dist.destroy_process_group()


def check_batch(batch_size: int) -> None:
    n = world_size()
    require(batch_size % n == 0, "trainer.batch_size", batch_size, f"a multiple of trainer.devices ({n})")


def shard(tensor: Tensor) -> Tensor:
    """This rank's contiguous slice of a global batch (the whole batch without DDP)."""
    n = world_size()
    return tensor if n == 1 else tensor.tensor_split(n)[rank()]


def all_reduce_sum(tensor: Tensor) -> Tensor:
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def launch(devices: int, task_overrides: list[str], run_dir: Path) -> int:
    """Run this training job on ``devices`` processes through torchrun; returns its exit code."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={devices}",
        "-m",
        "memexp.cli",
        "train",
        *task_overrides,
        f"hydra.run.dir={run_dir}",
    ]
    return subprocess.run(command, check=False).returncode
