"""Runs read from the W&B API (``--wandb ENTITY/PROJECT[:GROUP]``), as :class:`RunRecord`s like the
local ones: the memexp summary (``status``, final metrics) is the W&B run summary, the history is
the logged rows, and the seed comes from the run config. Needs network access and an API key."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memexp.errors import MemexpError
from memexp.report.runs import (
    DIVERGED,
    FAILED,
    FINISHED,
    INCOMPLETE,
    RunRecord,
    final_metrics,
    flatten,
    history_from_events,
)

SPEC_PATTERN = re.compile(r"^(?P<entity>[\w.-]+)/(?P<project>[\w.-]+)(?::(?P<group>.+))?$")
# W&B run states that did not end normally (the memexp summary's own status wins when present).
STATE_STATUS = {"finished": FINISHED, "crashed": FAILED, "failed": FAILED, "killed": FAILED, "running": INCOMPLETE}


@dataclass(frozen=True)
class WandbSpec:
    entity: str
    project: str
    group: str | None

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}"

    def __str__(self) -> str:
        return self.path + (f":{self.group}" if self.group else "")


def parse_spec(text: str) -> WandbSpec:
    match = SPEC_PATTERN.match(text)
    if match is None:
        raise MemexpError(f"--wandb={text!r} is not allowed: ENTITY/PROJECT or ENTITY/PROJECT:GROUP")
    return WandbSpec(match["entity"], match["project"], match["group"])


def record_from_wandb(run: Any) -> RunRecord:
    """One W&B run (a ``wandb.apis.public.Run``) as a record."""
    config = {k: v for k, v in dict(run.config).items() if not str(k).startswith("_")}
    summary = {k: v for k, v in dict(run.summary).items() if not str(k).startswith("_")}
    events = []
    for row in run.scan_history():
        step = row.get("step", row.get("_step"))
        if isinstance(step, int | float):
            events.append({**{k: v for k, v in row.items() if not k.startswith("_")}, "step": int(step)})
    record = RunRecord(source=f"wandb:{'/'.join(run.path)}", status=INCOMPLETE, config=flatten(config))
    seed = record.config.get("seed")
    record.seed = int(seed) if isinstance(seed, int | float) else None
    record.history = history_from_events(events)
    record.final = final_metrics(summary, record.history)
    record.step = summary.get("step") if isinstance(summary.get("step"), int) else None
    record.max_steps = summary.get("max_steps") if isinstance(summary.get("max_steps"), int) else None
    status = summary.get("status")
    if status in (FINISHED, DIVERGED, FAILED):
        record.status = status
        record.detail = str(summary.get("error", "")) if status == FAILED else ""
    else:
        record.status = STATE_STATUS.get(run.state, INCOMPLETE)
        record.detail = f"W&B state {run.state!r}" + ("" if status is None else f", memexp status {status!r}")
        if record.status == FINISHED and not record.final:
            record.status, record.detail = INCOMPLETE, f"W&B state {run.state!r} but no final metrics"
    return record


def fetch_runs(spec: WandbSpec, advance: Callable[[], None] | None = None, timeout_s: int = 30) -> list[RunRecord]:
    try:
        import wandb

        api = wandb.Api(timeout=timeout_s)
        runs = list(api.runs(spec.path, filters={"group": spec.group} if spec.group else None))
        records = []
        for run in runs:
            records.append(record_from_wandb(run))
            if advance is not None:
                advance()
    except MemexpError:
        raise
    except Exception as error:  # noqa: BLE001 - any API failure is reported as one line
        message = str(error).splitlines()[0] if str(error) else ""
        raise MemexpError(
            f"--wandb={spec}: cannot read the W&B API ({type(error).__name__}: {message}); it needs network "
            "access and an API key (`wandb login`). Local run dirs work offline: memexp report PATH"
        ) from None
    if not records:
        raise MemexpError(f"--wandb={spec}: no runs" + (f" in group {spec.group!r}" if spec.group else ""))
    return records
