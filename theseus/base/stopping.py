"""Stopping a long job cleanly: SIGTERM, SIGUSR1 and Ctrl-C become a flag the job checks where
its progress is safely on disk (a training step, a tokenize commit); it then exits with code 75,
"stopped early; run again to resume". A second Ctrl-C stops at once, without saving."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StoppedEarly(SystemExit):
    """The job stopped before its end with its progress saved: on a signal it exits with code 75;
    at a step a setting asked it to stop at (training.stop_at), with `code` 0, as it did what was
    asked (SLURM then does not queue it again, as it does a job that exits with 75)."""

    def __init__(self, reason: str, code: int = EXIT_STOPPED) -> None:
        super().__init__(code)
        self.reason = reason


class StopSignals:
    """While entered (on the main thread), the stop signals set `signal_name` instead of killing
    the process, and a second Ctrl-C ends it at once; leaving restores the previous handlers."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:
            if signum == signal.SIGINT:  # someone at the keyboard who will not wait
                # ended by the signal itself: an exception raised here could land anywhere (in
                # a garbage-collector callback, which swallows it); what is saved stays saved
                print("interrupted", file=sys.stderr, flush=True)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGINT)
            return
        self.signal_name = signal.Signals(signum).name
        print(
            f"{self.signal_name}: stopping where the progress so far is saved "
            "(Ctrl-C again stops at once, losing what is not saved)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def wait_interruptibly(blocking: Callable[[], object]) -> None:
    """Run `blocking` on a helper thread while this one waits for it.

    A wait inside C code (for a device computation) holds off Python's signal handlers until it
    returns, which on a CPU can be minutes for one step; a wait on a lock lets them run at once.
    """
    done = threading.Event()
    failure: list[BaseException] = []

    def wait() -> None:
        try:
            blocking()
        except BaseException as exc:  # handed to the waiting thread, which raises it
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=wait, name="theseus-wait", daemon=True).start()
    done.wait()
    if failure:
        raise failure[0]
