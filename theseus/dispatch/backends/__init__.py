"""Backends start, inspect and cancel jobs; each talks to its host through a `Shell`.

`local` and `ssh` start a detached process (on this machine or over ssh); `slurm` submits a batch
job with `sbatch` (over ssh to a login node, or locally).
"""

from __future__ import annotations

import abc
import io
import shlex
import subprocess
import tarfile
from dataclasses import dataclass
from typing import Protocol

from theseus.dispatch.bootstrap import JobFiles
from theseus.dispatch.records import Record
from theseus.dispatch.snapshot import Snapshot
from theseus.errors import UserError

# What `state()` reports.
STATES = (
    "starting",
    "queued",
    "running",
    "completed",
    "preempted",
    "failed",
    "cancelled",
    "unknown",
)
TERMINAL = ("completed", "failed", "cancelled")
# The line a trainer logs as it starts (training/report.py): "NAME: 2000 steps x 8 seqs x 1024 ..."
PLAN_LINE = ": [0-9]+ steps? x [0-9]+ seqs x [0-9]+ tokens "


@dataclass(frozen=True)
class Observation:
    """What `observe` saw of a run: its state, why (an exit code, a queue reason, the log's last
    line; may be empty) and the last line of its metrics; for `theseus status`'s table also the
    latest training and validation lines among the last metrics, and the latest line of its
    log.txt that states the plan ("NAME: 2000 steps x 8 seqs x 1024 tokens ..."); each empty
    when there is none."""

    state: str
    detail: str = ""
    metrics: str = ""
    train: str = ""
    val: str = ""
    plan: str = ""


# The job scripts' own lines around the run (see templates/; a SLURM task's carry its rank) and
# srun's echo of the exit code: never the reason a run failed.
_SCRIPT_LINES = (
    "^([0-9]+: )?theseus: (starting|finished with exit code|mounting JuiceFS at|unmounted )"
    "|; (left mounted|left alone|sharing it with the jobs using it|using it as is)$"
    "|^srun: error: .*: Exited with exit code [0-9]+$"
)


def _unlabelled(line: str) -> str:
    """A SLURM job's log line without srun's rank label ("1: error: ..."): rank 0's as it is,
    another's naming its process."""
    label, colon, rest = line.partition(": ")
    if not (colon and label.isdigit()):
        return line
    return rest if label == "0" else f"process {label}: {rest}"


def _one_line(command: str) -> str:
    """A shell line printing the last non-blank line of `command`'s output, or an empty line."""
    return (
        f"printf '%s\\n' \"$({{ {command}; }} 2>/dev/null | tr '\\r' '\\n' "
        f"| grep -av '^[[:space:]]*$' | tail -n 1)\""
    )


class Shell(Protocol):
    """Runs a bash command line on a host."""

    where: str

    def run(
        self, command: str, *, stdin: bytes = b"", timeout: float | None = 300
    ) -> subprocess.CompletedProcess[bytes]: ...


class LaunchRefused(UserError):
    """The host answered that it did not start the job."""


def check(
    result: subprocess.CompletedProcess[bytes],
    what: str,
    where: str,
    error: type[UserError] = UserError,
) -> bytes:
    """The stdout of a command that must succeed; otherwise a one-line error with its last words."""
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        raise error(
            f"{what} failed on {where} (exit {result.returncode}): {lines[-1] if lines else 'no message'}"
        )
    return result.stdout


def tarball(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), mode, 0
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def env_stream(env: dict[str, str]) -> bytes:
    """The job's environment as the launcher reads it from stdin: NAME=VALUE, NUL-terminated."""
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())


class Backend(abc.ABC):
    """One way to run jobs on a host reached through `shell`."""

    kind: str

    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def ship_snapshot(self, snapshot: Snapshot, target: str) -> bool:
        """Unpack `snapshot` at `target` unless it is there already; True if it was sent."""
        q = shlex.quote(target)
        present = self.shell.run(f"test -e {q}/.complete")
        if present.returncode == 0:
            return False
        staging = shlex.quote(f"{target}.incoming.{id(snapshot)}")
        command = (
            f"set -e; mkdir -p {staging}; tar -xzf - -C {staging}; touch {staging}/.complete; "
            f"mv -T {staging} {q} 2>/dev/null || rm -rf {staging}"
        )
        check(
            self.shell.run(command, stdin=snapshot.tarball()),
            "unpacking the code snapshot",
            self.shell.where,
        )
        return True

    def write_files(self, job: JobFiles) -> None:
        """Create the job folder (private: it holds the job's configs) and its files."""
        files = {name: (text.encode(), mode) for name, (text, mode) in job.files.items()}
        q = shlex.quote(job.dir)
        command = f"set -e; umask 077; mkdir -p {q}; tar -xzf - -C {q}"
        check(
            self.shell.run(command, stdin=tarball(files)), "writing the job files", self.shell.where
        )

    def read_log(self, record: Record, offset: int) -> bytes:
        """The job's log from byte `offset` on (empty if it has not started writing)."""
        q = shlex.quote(record.log)
        result = self.shell.run(f"[ -e {q} ] && tail -c +{offset + 1} {q} || true", timeout=60)
        return check(result, "reading the log", self.shell.where)

    @abc.abstractmethod
    def launch(self, job: JobFiles, env: dict[str, str]) -> str:
        """Start the job; returns its id on the host (a process id or a SLURM job id)."""

    def observe(self, records: list[Record]) -> list[Observation]:
        """The state of each of `records` on this host, with why and its last metrics line, in
        one round trip (so that `theseus status` costs one call per host, not three per run)."""
        fields = [self.state_commands(r) for r in records]
        lines = []
        for record, commands in zip(records, fields, strict=True):
            log = shlex.quote(record.log)
            tails = [
                f"tail -n 20 {log} | grep -aEv {shlex.quote(_SCRIPT_LINES)}",
                # a run folder out of reach here (a JuiceFS volume this host has not mounted):
                # the job log's last step line instead
                f"tail -n 1 {shlex.quote(record.metrics)} || tail -n 200 {log} | grep -aE '^([0-9]+: )?step [0-9]'",
                f"tail -n 200 {shlex.quote(record.metrics)} | grep -a '\"loss\"'",
                f"tail -n 200 {shlex.quote(record.metrics)} | grep -a '\"val_loss\"'",
                # the step count and batch shape, for step/total and the time left
                f"grep -aE {shlex.quote(PLAN_LINE)} {shlex.quote(record.run_dir + '/log.txt')}",
            ]
            lines += [_one_line(c) for c in [*commands, *tails]]
        out = check(
            self.shell.run("\n".join(lines), timeout=60), "reading job states", self.shell.where
        )
        values = out.decode(errors="replace").split("\n")
        seen, at = [], 0
        for record, commands in zip(records, fields, strict=True):
            *own, last_log, metrics, train, val, plan = values[at : at + len(commands) + 5]
            at += len(commands) + 5
            state, detail = self.interpret(record, own)
            if state == "failed" and last_log:
                last_log = _unlabelled(last_log)
                detail = f"{detail}: {last_log[:200]}" if detail else last_log[:200]
            seen.append(Observation(state, detail, metrics, train, val, plan))
        return seen

    def state(self, record: Record) -> str:
        """One of STATES."""
        return self.observe([record])[0].state

    @abc.abstractmethod
    def state_commands(self, record: Record) -> list[str]:
        """Shell commands whose last output lines `interpret` reads."""

    @abc.abstractmethod
    def interpret(self, record: Record, values: list[str]) -> tuple[str, str]:
        """(one of STATES, why) from the last lines of `state_commands`' outputs."""

    @abc.abstractmethod
    def cancel(self, record: Record) -> None:
        """Stop the job (it gets SIGTERM first, so it can checkpoint)."""


def backend_for(record_or_kind: Record | str, host: dict | None) -> Backend:
    """The backend of a host described by its (secret-free) settings; `host` None is this machine."""
    from theseus.dispatch.backends.local import LocalShell, ProcessBackend
    from theseus.dispatch.backends.slurm import SlurmBackend
    from theseus.dispatch.backends.ssh import SshShell

    kind = record_or_kind if isinstance(record_or_kind, str) else record_or_kind.backend
    shell: Shell = (
        SshShell.from_host(host) if host and (host.get("ssh") or host.get("host")) else LocalShell()
    )
    if kind == "slurm":
        return SlurmBackend(shell)
    return ProcessBackend(shell, kind)
