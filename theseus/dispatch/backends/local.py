"""This machine as a host, and the detached-process backend shared with SSH hosts."""

from __future__ import annotations

import shlex
import subprocess

from theseus.dispatch.backends import Backend, Shell, check, env_stream
from theseus.dispatch.bootstrap import JobFiles
from theseus.dispatch.records import Record


class LocalShell:
    """Runs commands with the local bash."""

    where = "this machine"

    def run(
        self, command: str, *, stdin: bytes = b"", timeout: float | None = 300
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["bash", "-c", command], input=stdin, capture_output=True, timeout=timeout
        )


class ProcessBackend(Backend):
    """A job as a detached process group with a pidfile, logging to a file on its host."""

    def __init__(self, shell: Shell, kind: str) -> None:
        super().__init__(shell)
        self.kind = kind

    def launch(self, job: JobFiles, env: dict[str, str]) -> str:
        result = self.shell.run(f"bash {shlex.quote(job.launcher)}", stdin=env_stream(env))
        return check(result, "starting the job", self.shell.where).decode().strip().splitlines()[-1]

    def state(self, record: Record) -> str:
        q = shlex.quote(record.job_dir)
        command = (
            f"cat {q}/status 2>/dev/null || echo starting; "
            f'p=$(cat {q}/pid 2>/dev/null); [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo alive || echo gone'
        )
        out = check(self.shell.run(command, timeout=60), "reading the job state", self.shell.where)
        status, alive = out.decode().split()[0], out.decode().split()[-1] == "alive"
        if status in ("starting", "running"):
            if alive:
                return status
            return "cancelled" if record.cancelled else "failed"
        if record.cancelled and status != "completed":
            return "cancelled"
        return status

    def cancel(self, record: Record) -> None:
        q = shlex.quote(record.job_dir)
        # The job leads its own process group (setsid): signal the whole group.
        command = f'p=$(cat {q}/pid 2>/dev/null) && kill -TERM -- -"$p" 2>/dev/null || true'
        check(self.shell.run(command, timeout=60), "cancelling the job", self.shell.where)
