"""The ``memexp`` command: dispatches to subcommands.

Heavy imports (torch, hydra, wandb) happen inside the subcommand, so ``memexp --help`` is instant.
``memexp train ...`` strips ``train`` from argv and hands the rest to a real ``@hydra.main`` app,
so every Hydra flag (``-m``, ``--cfg job``, ``--info``, ``hydra.run.dir=...``, shell completion)
works unchanged.
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> (module, function, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("memexp.job", "main", "train one run, or a sweep with -m (Hydra overrides: optimizer=lion seed=1)"),
    "tune": ("memexp.tune", "main", "fair comparison: search each arm on the validation split, confirm on fresh seeds"),
    "plan": ("memexp.plan", "main", "print the jobs `train -m <same overrides>` would run (and the sbatch script)"),
    "report": ("memexp.report.cli", "main", "compare runs: seed statistics, paired tests, plots (memexp report PATH)"),
}

USAGE = """usage: memexp <command> [args...]

memexp: an experiment runner for optimizer research (generalization gap and
implicit-regularization metrics, locally or on Slurm, logged to W&B and local files).

commands:
{commands}

`memexp <command> --help` describes a command. Examples:
  memexp train                                   # default model on the offline default data
  memexp train optimizer=adamw model=cnn seed=1  # Hydra overrides
  memexp train -m optimizer=sgd,adamw seed=0,1   # a sweep of 4 runs
  memexp plan hydra/launcher=slurm optimizer=sgd,adamw seed=0,1  # what that sweep would submit
  memexp tune optimizer=sgd,adamw optimizer.lr=1e-3,1e-2,1e-1    # tune each arm on validation, confirm
"""

COMPLETION_FLAGS = ("-sc", "--shell-completion")


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    commands = "\n".join(f"  {name:<{width}}  {text}" for name, (_, _, text) in SUBCOMMANDS.items())
    return USAGE.format(commands=commands)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from memexp import __version__

        print(f"memexp {__version__}")
        return 0
    command = args[0]
    if command in COMPLETION_FLAGS:
        # Hydra's bash completion script calls `memexp -sc query=bash` with COMP_LINE holding the
        # whole line; drop the subcommand word so Hydra sees `memexp <overrides>`.
        line = os.environ.get("COMP_LINE", "")
        words = line.split(" ")
        if len(words) > 1 and words[1] in SUBCOMMANDS:
            os.environ["COMP_LINE"] = " ".join(words[:1] + words[2:])
        command, rest = "train", args
    else:
        rest = args[1:]
    if command not in SUBCOMMANDS:
        print(f"memexp: unknown command {command!r}; choose from: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module_name, function_name, _ = SUBCOMMANDS[command]
    function = getattr(importlib.import_module(module_name), function_name)
    sys.argv = [sys.argv[0], *rest]
    result = function()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
