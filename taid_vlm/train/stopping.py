"""Stopping on request: SIGTERM (a preemption notice from SLURM or Kubernetes) and SIGUSR1.

The handler only notes the signal. The loop asks ``requested`` after every optimizer step; on
several processes the ranks agree on it with one small all-reduce (a signal may reach one rank
first), so every rank stops after the same step, writes the same checkpoint and exits 143.
SIGINT keeps Python's behaviour (KeyboardInterrupt: the run stops where it is, exit 130), except
while a checkpoint is being written: ``interrupts_deferred`` holds a Ctrl-C until the checkpoint
is complete (torch.distributed.checkpoint wraps an exception raised inside it, so an interrupt
there would end as an internal error with a half-written folder), then raises it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class StopRequests:
    """Context manager: while inside, SIGTERM and SIGUSR1 set ``received`` instead of ending the process."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def requested(self, env: Any) -> bool:
        """Whether any rank received a stop signal (a collective on several processes)."""
        return env.any(self.received is not None)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Inside, SIGINT is noted instead of raised; on leaving, a noted one raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def ignore_stop_signals(*_: Any) -> None:
    """For DataLoader workers: a signal sent to the whole process group is the main process's to handle."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
