"""How accurate is a twin's finite-difference Hessian-vector product? Against the exact one.

The memoryless twins (optimizer=<name>_memoryless, trainer.twin) take H·v on each step's batch by a
finite difference of gradients (memexp.optim.closure_hvp: ``hvp=forward`` by default, radius
r = rel·max(‖θ‖, 1), rel = eps^(1/2) of float32 ≈ 3.5e-4). This script measures its relative error
‖H·v_fd − H·v‖/‖H·v‖ against the exact product by double backward (autograd; for ReLU, the Hessian of
the piece the point lies in), for the heavy-ball twin's vector v = g, on one training batch of the
digits MLP and CNN, at initialization and after ``--steps`` steps of sgd (lr 0.03, constant), for
``forward`` and ``central`` at their default radii and at given ones (``--radii``).

A ReLU network's gradient jumps where a unit's pre-activation changes sign; a perturbation of radius
r flips about r·(units near 0) of them, each jump divided by r: the difference then measures the
kinks, not the curvature, unless r is small enough to cross none. A smooth activation (``tanh``)
shows what is left: truncation and rounding.

    python scripts/twin_hvp_accuracy.py [--steps 200] [--radii 1e-3,1e-5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import memexp.train as train_module
from memexp.config import Progress
from memexp.logging.progress import ProgressReporter
from memexp.optim.closure_hvp import perturbation_scale, relative_radius

CASES = {"mlp_relu": ["model=mlp"], "mlp_tanh": ["model=mlp", "model.activation=tanh"], "cnn_relu": ["model=cnn"]}


def trained_run(overrides: list[str], steps: int) -> train_module.Run:
    common = ["logger=none", "metrics=none", "optimizer=sgd", "optimizer.lr=0.03", "trainer.lr_schedule=constant"]
    with initialize_config_dir(config_dir=train_module.config_dir(), version_base="1.3"):
        cfg = compose("train", [*common, *overrides, f"trainer.max_steps={max(steps, 1)}"])
    run = train_module.build_run(train_module.check_config(cfg))
    if steps:
        with tempfile.TemporaryDirectory() as run_dir:
            train_module.train(run, Path(run_dir), [], ProgressReporter(steps, Progress.off))
    return run


def errors(run: train_module.Run, radii: list[float]) -> dict[str, float]:
    """Relative error of each finite difference on the run's next batch, keyed method@rel."""
    x, y = next(run.batches)
    names = [name for name, p in run.model.named_parameters() if p.requires_grad]
    params = [p for p in run.model.parameters() if p.requires_grad]

    def gradient(weights: list[torch.Tensor], create_graph: bool = False) -> tuple[torch.Tensor, ...]:
        output = torch.func.functional_call(run.model, dict(zip(names, weights)), (x,))
        return torch.autograd.grad(run.task.loss(output, y), weights, create_graph=create_graph)

    run.model.eval()  # no dropout in these models; eval keeps any from drawing masks
    g = gradient(params, create_graph=True)
    vectors = [t.detach() for t in g]  # the heavy-ball twin's v = g

    def gradient_at(step: torch.Tensor) -> torch.Tensor:
        """The flat gradient at θ + step·v."""
        weights = [(p.detach() + step * t).requires_grad_(True) for p, t in zip(params, vectors)]
        return torch.cat([t.flatten() for t in gradient(weights)])

    exact = torch.cat([t.flatten() for t in torch.autograd.grad(g, params, grad_outputs=vectors)])
    theta = torch.cat([p.detach().flatten() for p in params])
    v = torch.cat([t.flatten() for t in vectors])
    out = {}
    for method in ("forward", "central"):
        central = method == "central"
        for rel in [relative_radius(theta.dtype, central, None), *radii]:
            scale = perturbation_scale(theta.norm(), v.norm(), rel)

            start = gradient_at(-scale) if central else v
            product = (gradient_at(scale) - start) / (scale * (2 if central else 1))
            out[f"{method}@{rel:.1e}"] = round(((product - exact).norm() / exact.norm()).item(), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="sgd steps before the second measurement")
    parser.add_argument("--radii", default="1e-3,1e-5", help="relative radii to try besides the defaults")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_module.register_configs()
    radii = [float(r) for r in args.radii.split(",") if r]
    report = {
        case: {f"{steps} steps": errors(trained_run(overrides, steps), radii) for steps in (0, args.steps)}
        for case, overrides in CASES.items()
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
