"""Problems with known Hessians for the metrics tests (imported by the test files next to it)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Quadratic(nn.Module):
    """L(x) = 1/2 x^T A x + b^T x, whatever the input: Hessian A everywhere, gradient A x + b.
    The output is the loss repeated once per example so that a mean over the batch gives L."""

    def __init__(self, matrix: Tensor, shift: Tensor | None = None, start: Tensor | None = None) -> None:
        super().__init__()
        dim = matrix.shape[0]
        self.register_buffer("matrix", matrix)
        self.register_buffer("shift", torch.zeros(dim, dtype=matrix.dtype) if shift is None else shift)
        self.x = nn.Parameter(torch.ones(dim, dtype=matrix.dtype) if start is None else start.clone())

    def forward(self, inputs: Tensor) -> Tensor:
        value = 0.5 * self.x @ self.matrix @ self.x + self.shift @ self.x
        return value.expand(inputs.shape[0])


def mean_output(output: Tensor, target: Tensor) -> Tensor:
    return output.mean()


def quadratic_batch(examples: int = 4, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    return torch.zeros(examples, 1, dtype=dtype), torch.zeros(examples, dtype=dtype)


def matrix_with_spectrum(eigenvalues: Tensor, seed: int = 0) -> Tensor:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q (float64)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64))
    return q @ torch.diag(eigenvalues.double()) @ q.T


def tiny_net(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A smooth (tanh) two-layer net small enough for a dense Hessian."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype)


def tiny_data(examples: int = 16, dtype: torch.dtype = torch.float64, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(examples, 3, generator=generator, dtype=dtype)
    return inputs, torch.randint(0, 3, (examples,), generator=generator)


def dense_hessian(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> Tensor:  # noqa: ANN001
    """The float64 reference: torch.autograd.functional.hessian of the loss in the flat parameters."""
    from torch.func import functional_call

    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(vector: Tensor) -> Tensor:
        parts = {n: v.view(s) for n, v, s in zip(names, vector.split(sizes), shapes)}
        return loss_fn(functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


def read_wandb_records(path) -> list:  # noqa: ANN001
    """The protobuf records of a W&B transaction log (``run-<id>.wandb``).

    wandb >= 0.2x no longer ships a Python reader (``wandb.sdk.internal.datastore`` is gone; the Go
    core writes the file), so this decodes the format directly: a 7-byte header (":W&B", magic
    0xBEE1, version), then LevelDB-log style 32 KiB blocks of chunks, each with a 7-byte header
    (crc32c, little-endian length, type 1 full / 2 first / 3 middle / 4 last)."""
    import struct
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block_size, header_size = 32768, 7
    records, pending, offset = [], b"", header_size
    while offset + header_size <= len(data):
        room = block_size - offset % block_size
        if room < header_size:  # the rest of a block too small for a chunk header is padding
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + header_size])
        if offset + header_size + length > len(data):
            break  # a chunk still being written
        chunk = data[offset + header_size : offset + header_size + length]
        offset += header_size + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_logged_keys(run_dir) -> tuple[set[str], set[str]]:  # noqa: ANN001
    """(history keys, summary keys) of the one offline W&B run under ``run_dir``."""
    import time
    from pathlib import Path

    (log,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    # run.finish() returns before wandb-core has written the whole log: wait for the exit record and
    # a size that stops changing.
    deadline, size = time.monotonic() + 60, -1
    while time.monotonic() < deadline:
        records = read_wandb_records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in records) and log.stat().st_size == size:
            break
        size = log.stat().st_size
        time.sleep(0.5)
    history, summary = set(), set()
    for record in read_wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "summary":
            summary |= {item.key or "/".join(item.nested_key) for item in record.summary.update}
    return history, summary
