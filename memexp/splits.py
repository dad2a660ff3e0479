"""The evaluation splits and their names, in one place (no heavy imports: the report uses it too).

- ``train/*``: a fixed subset of the data that is trained on, as large as the test set;
- ``val/*``: the validation split, carved out of the training data and never trained on. Selecting
  hyperparameters (``memexp tune``) reads only this split;
- ``test/*``: the held-out test split. Reported held-out figures and the generalization gap use it;
- ``gap/* = test/* - train/*`` (equally sized sets, the same evaluation code, eval mode).
"""

from __future__ import annotations

SPLITS = ("train", "val", "test")
GAP = "gap"
# Prefixes of the evaluation metrics: the splits and the gap.
EVAL_PREFIXES = tuple(f"{name}/" for name in (*SPLITS, GAP))
# What people call each split in tables and plots.
SPLIT_LABELS = {"train": "train", "val": "validation", "test": "test (held-out)"}
# The split hyperparameter selection may read, and the one it must never read.
SELECTION_SPLIT, HELD_OUT_SPLIT = "val", "test"
