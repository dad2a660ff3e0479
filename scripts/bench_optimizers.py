"""Cost of the optimizer family on a ~10M-parameter model with many tensors of mixed sizes.

Measured in one process, interleaved with the reference so machine noise hits both alike:

- ``step_ratio_vs_adamw``: time of ``optimizer.step()`` alone over ``torch.optim.AdamW(foreach=True)``'s,
  both on the same gradients. The memoryless-corrected twins get a closure that only puts the stored
  gradients back (no forward/backward), so this is the optimizer's own cost: elementwise work,
  the parameter backup and restore of the finite-difference Hessian-vector product.
- ``state_ratio_vs_adamw``: bytes of optimizer state (all tensors in ``optimizer.state``) over AdamW's.
- ``full_step_ratio_vs_plain`` (twins only): forward + backward + step of the corrected optimizer with
  its default ``hvp="forward"`` (one extra forward + backward) over its plain counterpart
  (torch SGD with momentum, torch AdamW foreach, memexp Lion). Measured at ``--batch`` (small: the
  optimizers' elementwise passes weigh) and again at ``--large-batch`` (compute-bound: the ratio
  approaches 2, the one extra gradient evaluation) as ``large_batch_full_step_ratio_vs_plain``.

Goals (issue 3): Lion step <= 0.8x AdamW-foreach, Lion state = 0.5x, corrected full step <= 2.2x.
On CUDA, ``torch.optim.AdamW(fused=True)`` is reported too, as a reference.

    python scripts/bench_optimizers.py [--device cpu|cuda] [--rounds 7] [--steps 5] [--large-batch 32]
                                       [--only NAMES] [--full-step-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from memexp.optim import (
    AdaptiveMemoryAdamW,
    AdaptiveMemorySGD,
    Lion,
    LionK,
    MemorylessAdamW,
    MemorylessLion,
    MemorylessSGD,
)


class Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class BenchModel(nn.Module):
    """Token embedding, residual MLP blocks, a head: ≈10.5M parameters in 52 tensors (1D and 2D)."""

    def __init__(self, vocab: int = 8192, width: int = 256, hidden: int = 1024, depth: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.Sequential(*[Block(width, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens))))


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "lion": lambda p: Lion(p, lr=1e-4, weight_decay=0.1),
    "lion_k_l2": lambda p: LionK(p, lr=1e-4, weight_decay=0.1, kernel="l2"),
    "sgd_memoryless": lambda p: MemorylessSGD(p, lr=0.01, momentum=0.9),
    "adamw_memoryless": lambda p: MemorylessAdamW(p, lr=1e-3),
    "lion_memoryless": lambda p: MemorylessLion(p, lr=1e-4, weight_decay=0.1),
    "am_sgd": lambda p: AdaptiveMemorySGD(p, lr=0.01),
    "am_adamw": lambda p: AdaptiveMemoryAdamW(p, lr=1e-3),
}
PLAIN_COUNTERPART: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd_memoryless": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, foreach=True),
    "adamw_memoryless": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
    "lion_memoryless": lambda p: Lion(p, lr=1e-4, weight_decay=0.1),
}


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Setup:
    """A model with fixed gradients, for timing step() alone."""

    def __init__(self, device: torch.device, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = BenchModel().to(device)
        self.params = list(self.model.parameters())
        self.grads = [torch.randn_like(p) * 1e-3 for p in self.params]
        self.set_grads()

    def set_grads(self) -> Tensor:
        for p, g in zip(self.params, self.grads):
            p.grad = g
        return torch.zeros(())


def time_steps(optimizer: torch.optim.Optimizer, setup: Setup, steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step(setup.set_grads)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def step_ratio(
    name: str, make: Callable, reference: Callable, device: torch.device, rounds: int, steps: int
) -> dict[str, float]:
    setups = [Setup(device, 0), Setup(device, 0)]
    optimizers = [reference(setups[0].params), make(setups[1].params)]
    for optimizer, setup in zip(optimizers, setups):  # warm-up: state allocation, caches
        time_steps(optimizer, setup, 2, device)
    ratios, reference_times, times = [], [], []
    for _ in range(rounds):
        reference_time = time_steps(optimizers[0], setups[0], steps, device)
        own_time = time_steps(optimizers[1], setups[1], steps, device)
        reference_times.append(reference_time)
        times.append(own_time)
        ratios.append(own_time / reference_time)
    return {
        "step_ms": statistics.median(times) * 1e3,
        "reference_step_ms": statistics.median(reference_times) * 1e3,
        "step_ratio_vs_adamw": statistics.median(ratios),
        "state_ratio_vs_adamw": state_bytes(optimizers[1]) / state_bytes(optimizers[0]),
        "state_bytes": state_bytes(optimizers[1]),
    }


def full_step_ratio(
    name: str, device: torch.device, rounds: int, steps: int, batch: int, length: int
) -> dict[str, float]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 8192, (batch, length + 1), generator=generator).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    models, optimizers, closures = [], [], []
    for make in (PLAIN_COUNTERPART[name], OPTIMIZERS[name]):
        torch.manual_seed(0)
        model = BenchModel().to(device)
        optimizer = make(list(model.parameters()))

        def closure(model: nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            logits = model(inputs)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            loss.backward()
            return loss

        models.append(model)
        optimizers.append(optimizer)
        closures.append(closure)

    def timed(index: int, count: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(count):
            optimizers[index].step(closures[index])
        synchronize(device)
        return (time.perf_counter() - start) / count

    timed(0, 1)
    timed(1, 1)
    ratios, plain_times, own_times = [], [], []
    for _ in range(rounds):
        plain = timed(0, steps)
        own = timed(1, steps)
        plain_times.append(plain)
        own_times.append(own)
        ratios.append(own / plain)
    return {
        "full_step_ms": statistics.median(own_times) * 1e3,
        "plain_full_step_ms": statistics.median(plain_times) * 1e3,
        "full_step_ratio_vs_plain": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--batch", type=int, default=4, help="sequences per full train step")
    parser.add_argument("--length", type=int, default=32, help="tokens per sequence")
    parser.add_argument(
        "--large-batch", type=int, default=32, help="sequences per full step, compute-bound configuration (0: skip)"
    )
    parser.add_argument("--only", default="", help="comma-separated subset of optimizers")
    parser.add_argument("--full-step-only", action="store_true", help="skip the step-alone ratios")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    reference = lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True)  # noqa: E731
    names = [n for n in OPTIMIZERS if not args.only or n in args.only.split(",")]
    model = BenchModel()
    report: dict[str, object] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensors": len(list(model.parameters())),
        "full_step_tokens": args.batch * args.length,
        "large_batch_full_step_tokens": args.large_batch * args.length,
        "optimizers": {},
    }
    results: dict[str, dict[str, float]] = {}
    for name in names:
        if args.full_step_only and name not in PLAIN_COUNTERPART:
            continue
        results[name] = {}
        if not args.full_step_only:
            results[name] = step_ratio(name, OPTIMIZERS[name], reference, device, args.rounds, args.steps)
        if name in PLAIN_COUNTERPART:
            results[name].update(
                full_step_ratio(name, device, args.rounds, max(1, args.steps // 2), args.batch, args.length)
            )
            if args.large_batch > 0:
                # Each step costs ~large_batch/batch times more: one step per timed block is enough.
                large = full_step_ratio(name, device, args.rounds, 1, args.large_batch, args.length)
                results[name].update({f"large_batch_{key}": value for key, value in large.items()})
    if device.type == "cuda":
        fused = lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)  # noqa: E731
        results["reference_adamw_fused"] = step_ratio("adamw_fused", fused, reference, device, args.rounds, args.steps)
    report["optimizers"] = results
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
