"""Preemption and time limits: stop at a step boundary, checkpoint, then let the scheduler act.

Slurm (through submitit, ``--signal=USR2@<delay>``) warns a job before it is preempted or hits its
time limit; a plain ``kill`` sends SIGTERM. A signal can arrive in the middle of an optimizer
step, when the model and the optimizer disagree, so the handler only records it; the training
loop checks the flag after every step, writes a checkpoint of a consistent state, and then hands
the signal to whoever handled it before: submitit's handler requeues the job (which resumes from
that checkpoint), the default handler means "stop" (:class:`Interrupted`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

WATCHED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class Interrupted(Exception):
    """The run was asked to stop by a signal nobody else handles; its checkpoint is saved."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class GracefulStop:
    def __init__(self, signals: tuple[int, ...] = WATCHED) -> None:
        self.signals = signals
        self.pending: int | None = None
        self.forwarding = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for signum in self.signals:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.pending = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.pending).name if self.pending is not None else ""

    def forward(self) -> None:
        """Hand the pending signal to its previous handler. Returns if that handler returns (the
        run goes on); raises what it raises (submitit's requeue exits), or :class:`Interrupted`."""
        signum, self.pending = self.pending, None
        assert signum is not None
        previous = self._previous.get(signum, signal.SIG_DFL)
        if previous == signal.SIG_IGN:
            return
        if callable(previous):
            handler: Callable[[int, FrameType | None], Any] = previous
            self.forwarding = True
            handler(signum, None)
            self.forwarding = False
            return
        raise Interrupted(signum)
