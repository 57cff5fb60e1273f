"""This machine as a host, and the detached-process backend shared with SSH hosts."""

from __future__ import annotations

import shlex
import subprocess

from theseus.dispatch.backends import Backend, LaunchRefused, Shell, check, env_stream
from theseus.dispatch.bootstrap import PROCESS_FUNCTIONS, JobFiles
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
        return (
            check(result, "starting the job", self.shell.where, LaunchRefused)
            .decode()
            .strip()
            .splitlines()[-1]
        )

    def state_commands(self, record: Record) -> list[str]:
        q = shlex.quote(record.job_dir)
        return [f"cat {q}/status", f"{PROCESS_FUNCTIONS}; ours {q}/pid && echo alive"]

    def interpret(self, record: Record, values: list[str]) -> tuple[str, str]:
        status, *code = values[0].split() or ["starting"]
        if values[1] == "alive":
            # the job writes its final status just before its process ends: until then it still
            # holds its host (and its reserved GPUs)
            return ("starting" if status == "starting" else "running"), ""
        if status in ("starting", "running"):
            if record.cancelled:
                return "cancelled", ""
            return "failed", "ended without writing its status, as a killed job does"
        if record.cancelled and status != "completed":
            return "cancelled", ""
        return status, f"exit {code[0]}" if code else ""

    def cancel(self, record: Record) -> None:
        q = shlex.quote(record.job_dir)
        # The job leads its own process group (setsid): signal the whole group.
        command = f'{PROCESS_FUNCTIONS}; ours {q}/pid && kill -TERM -- -"$p" 2>/dev/null || true'
        check(self.shell.run(command, timeout=60), "cancelling the job", self.shell.where)
