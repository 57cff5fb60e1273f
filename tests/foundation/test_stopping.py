"""Stop signals: the first asks for a clean stop at once, even while the job waits on a long
computation; a second Ctrl-C ends the process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

JOB = """
import time
from theseus.base.stopping import StopSignals, wait_interruptibly

with StopSignals() as stop:
    print("waiting", flush=True)
    started = time.monotonic()
    wait_interruptibly(lambda: time.sleep({seconds}))  # stands in for a step of the device
    print(f"done after {{time.monotonic() - started:.1f}} s, stop asked by {{stop.signal_name}}")
"""


def start(seconds: float) -> subprocess.Popen:
    job = subprocess.Popen(
        [sys.executable, "-c", JOB.format(seconds=seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert job.stdout is not None and job.stdout.readline() == "waiting\n"
    return job


def test_a_stop_signal_is_seen_at_once_and_the_wait_goes_on():
    job = start(3)
    time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=30)
    assert job.returncode == 0, err
    assert err.startswith("SIGTERM: stopping where the progress so far is saved")
    assert out.startswith("done after 3.") and out.endswith("stop asked by SIGTERM\n")


def test_a_second_ctrl_c_ends_the_process_at_once():
    job = start(60)
    started = time.monotonic()
    job.send_signal(signal.SIGINT)
    time.sleep(0.5)
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert job.returncode == -signal.SIGINT and out == ""
    assert err.splitlines() == [
        "SIGINT: stopping where the progress so far is saved (Ctrl-C again stops at once, "
        "losing what is not saved)",
        "interrupted",
    ]
