"""Does a memoryless-corrected twin track its original optimizer? (seed 000, docs/memory_theory.md)

For each optimizer with memory and its memoryless twin, run both from the same start on the same
deterministic (full-batch, float64) loss for a fixed time horizon T, at several step sizes h
(steps = T/h), and record the largest distance ‖θ_orig − θ_twin‖ along the way. The theorem says
that distance is O(h²) with the correction term and O(h) without it, so the slope of log(distance)
against log(h) should be about 2 with the correction and about 1 without.

Problems: ``quartic`` (L = ½θᵀAθ + c/4·Σθ⁴ + bᵀθ on R⁶; smooth, coupled, non-quadratic) and ``mlp``
(a 5-8-8-3 tanh MLP, float64, squared error on one fixed batch of 64 random points). Lion's update
takes sign(), which is not smooth, so no O(h²) statement is made for it; its slopes are printed for
information. The twins use exact double-backward Hessian-vector products (no finite differences),
so the slopes measure the theorem and not HVP error. Prints one JSON object.

    python scripts/twin_trajectory.py [--problems quartic,mlp] [--step-sizes-scale 1.0]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from memexp.optim import Lion, MemorylessAdamW, MemorylessLion, MemorylessSGD

Closure = Callable[..., Tensor]


class Quartic:
    """L(θ) = ½θᵀAθ + (c/4)·Σθ_i⁴ + bᵀθ, θ ∈ R⁶ held as two tensors (so multi-tensor paths run)."""

    def __init__(self, seed: int = 0, quartic: float = 0.2, start_scale: float = 0.5) -> None:
        generator = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
        self.a = q @ torch.diag(torch.linspace(0.5, 3.0, 6, dtype=torch.float64)) @ q.T
        self.b = torch.randn(6, generator=generator, dtype=torch.float64)
        self.c = quartic
        self.start = start_scale * torch.randn(6, generator=generator, dtype=torch.float64)

    def parameters(self) -> list[nn.Parameter]:
        return [nn.Parameter(self.start[:4].reshape(2, 2).clone()), nn.Parameter(self.start[4:].clone())]

    def closure(self, params: list[nn.Parameter]) -> Closure:
        def closure(create_graph: bool = False) -> Tensor:
            for p in params:
                p.grad = None
            theta = torch.cat([p.reshape(-1) for p in params])
            loss = 0.5 * theta @ self.a @ theta + self.c / 4 * (theta**4).sum() + self.b @ theta
            loss.backward(create_graph=create_graph)
            return loss

        return closure


class FullBatchMLP:
    """Squared error of a float64 tanh MLP on one fixed batch: deterministic, so the ODE picture holds."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.template = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        generator = torch.Generator().manual_seed(seed + 1)
        self.inputs = torch.randn(64, 5, generator=generator, dtype=torch.float64)
        self.targets = torch.randn(64, 3, generator=generator, dtype=torch.float64)

    def parameters(self) -> list[nn.Parameter]:
        return [nn.Parameter(p.detach().clone()) for p in self.template.parameters()]

    def closure(self, params: list[nn.Parameter]) -> Closure:
        w1, b1, w2, b2, w3, b3 = params

        def closure(create_graph: bool = False) -> Tensor:
            for p in params:
                p.grad = None
            hidden = torch.tanh(torch.tanh(self.inputs @ w1.T + b1) @ w2.T + b2)
            loss = ((hidden @ w3.T + b3 - self.targets) ** 2).mean()
            loss.backward(create_graph=create_graph)
            return loss

        return closure


def flat(params: list[nn.Parameter]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def max_distance(problem, make_original, make_twin, steps: int) -> tuple[float, float]:
    """Largest ‖θ_orig − θ_twin‖ over the horizon, and the mean implicit penalty the twin reported."""
    original_params, twin_params = problem.parameters(), problem.parameters()
    original, twin = make_original(original_params), make_twin(twin_params)
    original_closure, twin_closure = problem.closure(original_params), problem.closure(twin_params)
    distance, penalties = 0.0, []
    for _ in range(steps):
        original.step(original_closure)
        twin.step(twin_closure)
        distance = max(distance, torch.linalg.vector_norm(flat(original_params) - flat(twin_params)).item())
        penalty = twin.last_stats.get("implicit_penalty")
        if penalty is not None:
            penalties.append(float(penalty))
    return distance, (sum(penalties) / len(penalties) if penalties else float("nan"))


def fitted_slope(step_sizes: list[float], distances: list[float]) -> float:
    """Least-squares slope of log(distance) on log(h)."""
    xs, ys = [math.log(h) for h in step_sizes], [math.log(d) for d in distances]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sum((x - x_mean) ** 2 for x in xs)


# name -> (original, twin(correction), step sizes, horizon T). AdamW cases: eps=0.5, weight_decay=0.1
# (a large eps keeps g/(|g|+eps) smooth near g = 0). Lion: no O(h²) theorem (sign). Settings chosen
# so h·λ_max(H) is small (the asymptotic regime of the theorem) and the horizon spans many optimizer
# time constants.
CASES: dict[str, tuple[Callable, Callable, list[float], float]] = {
    "heavy_ball_m0.5": (
        lambda p, h: torch.optim.SGD(p, lr=h, momentum=0.5),
        lambda p, h, c: MemorylessSGD(p, lr=h, momentum=0.5, correction=c, hvp="double_backward"),
        [0.02, 0.01, 0.005],
        1.0,
    ),
    "heavy_ball_m0.9": (
        lambda p, h: torch.optim.SGD(p, lr=h, momentum=0.9),
        lambda p, h, c: MemorylessSGD(p, lr=h, momentum=0.9, correction=c, hvp="double_backward"),
        [0.001, 0.0005, 0.00025],  # h·β/(1−β)² = 90h must be small: the asymptotic regime needs h ≪ 0.01
        0.25,
    ),
    "adamw_b0.9_0.9": (
        lambda p, h: torch.optim.AdamW(p, lr=h, betas=(0.9, 0.9), eps=0.5, weight_decay=0.1),
        lambda p, h, c: MemorylessAdamW(
            p, lr=h, betas=(0.9, 0.9), eps=0.5, weight_decay=0.1, correction=c, hvp="double_backward"
        ),
        [0.004, 0.002, 0.001],
        0.5,
    ),
    "adamw_b0.9_0.99": (
        lambda p, h: torch.optim.AdamW(p, lr=h, betas=(0.9, 0.99), eps=0.5, weight_decay=0.1),
        lambda p, h, c: MemorylessAdamW(
            p, lr=h, betas=(0.9, 0.99), eps=0.5, weight_decay=0.1, correction=c, hvp="double_backward"
        ),
        [0.001, 0.0005, 0.00025],  # β2's lag is 99 steps: h must be small for 99h·λ_max ≪ 1
        0.5,
    ),
    "lion_b0.9_0.99": (
        lambda p, h: Lion(p, lr=h, betas=(0.9, 0.99)),
        lambda p, h, c: MemorylessLion(p, lr=h, betas=(0.9, 0.99), correction=c, hvp="double_backward"),
        [0.004, 0.002, 0.001],
        0.5,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="quartic,mlp", help="comma-separated: quartic, mlp")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names (see CASES)")
    args = parser.parse_args()
    problems = {"quartic": Quartic, "mlp": FullBatchMLP}
    torch.set_num_threads(1)
    result: dict[str, object] = {"torch": torch.__version__, "dtype": "float64", "results": []}
    started = time.perf_counter()
    for problem_name in args.problems.split(","):
        problem = problems[problem_name]()
        for case in args.cases.split(","):
            make_original, make_twin, step_sizes, horizon = CASES[case]
            row: dict[str, object] = {
                "problem": problem_name,
                "optimizer": case,
                "horizon": horizon,
                "step_sizes": step_sizes,
            }
            for correction in (True, False):
                measured = [
                    max_distance(
                        problem,
                        functools.partial(make_original, h=h),
                        functools.partial(make_twin, h=h, c=correction),
                        round(horizon / h),
                    )
                    for h in step_sizes
                ]
                distances = [d for d, _ in measured]
                key = "with_correction" if correction else "without_correction"
                row[key] = {"max_distance": distances, "slope": round(fitted_slope(step_sizes, distances), 3)}
                if correction:
                    row[key]["mean_implicit_penalty"] = [p for _, p in measured]
            result["results"].append(row)
            print(f"{problem_name} {case}: {row}", file=sys.stderr, flush=True)
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
