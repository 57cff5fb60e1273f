"""Stopping a long job cleanly: SIGTERM, SIGUSR1 and Ctrl-C become a flag the job checks where
its progress is safely on disk (a training step, a tokenize commit); it then exits with code 75,
"stopped early; run again to resume"."""

from __future__ import annotations

import signal
import threading
from typing import Any

EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StoppedEarly(SystemExit):
    """A signal asked the job to stop; its progress is saved and it exits with code 75."""

    def __init__(self, reason: str) -> None:
        super().__init__(EXIT_STOPPED)
        self.reason = reason


class StopSignals:
    """While entered (on the main thread), the stop signals set `signal_name` instead of killing
    the process; leaving restores the previous handlers."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
