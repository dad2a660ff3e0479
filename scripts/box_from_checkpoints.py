"""Lion's box statistics (max|x|·λ, the fraction with |x|·λ > 0.99) of a tune study's confirmation runs,
read from their last checkpoint, for every arm, including optimizers for which the training metrics do
not log them (``projected_adam``: its weight_decay is the box's λ, not a decoupled decay).

    python scripts/box_from_checkpoints.py /tmp/lionbox/lion_box > docs/results/lion_box_tuned/box_from_checkpoints.json

Each run's model is rebuilt from its own overrides (.hydra/overrides.yaml), its parameters split as the
run split them (memexp.optim.param_groups, with the run's optimizer.weight_decay as λ), the last
checkpoint's weights loaded, and the statistics computed by the metric's own function
(memexp.metrics.geometry.lion_constraint). Prints JSON: per arm, per seed, and the mean/min/max.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from memexp import checkpoint as ckpt
from memexp.data import DATASETS
from memexp.metrics import geometry
from memexp.models import MODELS
from memexp.optim.param_groups import param_groups_weight_decay
from memexp.rundir import TUNE_JSON, compose_sweep
from memexp.train import check_config


def box_of_run(run_dir: Path) -> dict[str, float]:
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    cfg = check_config(compose_sweep([o for o in overrides if not o.startswith("task_name=")]).jobs[0].config)
    data = DATASETS.build(cfg.data.name, cfg.data, "cpu")
    model = MODELS.build(cfg.model.name, cfg.model, data.spec)
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoints/step_*.pt")
    state = ckpt.load(checkpoints[-1])
    model.load_state_dict(state["model"])
    names_by_id = {id(p): name for name, p in model.named_parameters()}
    names, params, decay = [], [], []
    for group in param_groups_weight_decay(model, cfg.optimizer.weight_decay, cfg.optimizer.no_decay):
        for param in group["params"]:
            names.append(names_by_id[id(param)])
            params.append(param)
            decay.append(float(group["weight_decay"]))
    stats = geometry.lion_constraint(names, params, decay)
    return {"step": int(state["step"]), "lambda": float(cfg.optimizer.weight_decay), **stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    args = parser.parse_args(argv)
    tune_json = args.study_dir / TUNE_JSON
    if not tune_json.is_file():
        print(
            f"box_from_checkpoints: error: study_dir={args.study_dir} is not allowed: a tune study dir", file=sys.stderr
        )
        return 2
    study = json.loads(tune_json.read_text())
    out: dict[str, object] = {}
    for arm, record in study["arms"].items():
        confirmation = record["confirmation"]
        per_seed = {}
        for seed, run, status in zip(confirmation["seeds"], confirmation["run_dirs"], confirmation["statuses"]):
            if status == "finished":
                stats = box_of_run(args.study_dir / run)
                per_seed[str(seed)] = {
                    k: stats[k] for k in ("step", "lambda", "geom/lion_linf_lambda", "geom/lion_saturation")
                }
        summary = {}
        for key in ("geom/lion_linf_lambda", "geom/lion_saturation"):
            values = [s[key] for s in per_seed.values()]
            summary[key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
        out[arm] = {"summary": summary, "per_seed": per_seed}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
