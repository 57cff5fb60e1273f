"""Stop signals: the first asks for a clean stop at once, even while the job waits on a long
computation; a second Ctrl-C ends the process."""

from __future__ import annotations

import select
import signal
import subprocess
import sys

JOB = """
import sys, threading
from theseus.base.stopping import StopSignals, wait_interruptibly

with StopSignals() as stop:
    print("waiting", flush=True)
    wait_interruptibly({blocking})  # stands in for a step of the device
    print(f"done, stop asked by {{stop.signal_name}}")
"""


def start(blocking: str) -> subprocess.Popen:
    """The job, waiting on `blocking` (a callable's source) once it has printed "waiting"."""
    job = subprocess.Popen(
        [sys.executable, "-c", JOB.format(blocking=blocking)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert job.stdout is not None and job.stdout.readline() == "waiting\n"
    return job


def next_line(job: subprocess.Popen) -> str:
    """The job's next line on stderr; a job that says nothing fails the test instead of hanging it."""
    assert job.stderr is not None
    if not select.select([job.stderr], [], [], 60)[0]:
        job.kill()
        raise AssertionError("the job printed nothing on stderr")
    return job.stderr.readline()


def test_a_stop_signal_is_seen_at_once_and_the_wait_goes_on():
    """The wait ends only when the test feeds the job a line: the signal's message comes while
    it still waits, and the wait then finishes as it would have."""
    job = start("sys.stdin.readline")
    job.send_signal(signal.SIGTERM)
    assert next_line(job).startswith("SIGTERM: stopping where the progress so far is saved")
    assert job.poll() is None  # still waiting: the signal did not cut the wait short
    out, err = job.communicate("step finished\n", timeout=30)
    assert job.returncode == 0, err
    assert out == "done, stop asked by SIGTERM\n" and err == ""


def test_a_second_ctrl_c_ends_the_process_at_once():
    """The job waits on an event nothing sets: only the second Ctrl-C can end it."""
    job = start("threading.Event().wait")
    job.send_signal(signal.SIGINT)
    assert next_line(job) == (
        "SIGINT: stopping where the progress so far is saved (Ctrl-C again stops at once, "
        "losing what is not saved)\n"
    )
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=30)
    assert job.returncode == -signal.SIGINT and out == ""
    assert err == "interrupted\n"
