"""Hosts reached with the system OpenSSH client (so ~/.ssh/config, agents, ProxyJump and host-key
checks all apply), reusing one connection per host."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from theseus.errors import UserError


def _control_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"theseus-ssh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.getuid() or path.stat().st_mode & 0o077:
        raise UserError(f"{path} is not private to you; remove it and try again")
    return path


class SshShell:
    """Runs commands on `target` over ssh; the remote side gets one shell-quoted command line."""

    def __init__(self, target: str, options: list[str]) -> None:
        self.target = target
        self.where = target
        config = os.environ.get("THESEUS_SSH_CONFIG")
        self.options = [
            *(["-F", config] if config else []),
            "-o",
            "BatchMode=yes",
            "-o",
            f"ControlPath={_control_dir()}/%C",
            *options,
        ]

    @classmethod
    def from_host(cls, host: dict[str, Any]) -> SshShell:
        options: list[str] = []
        if host.get("port"):
            options += ["-p", str(host["port"])]
        if host.get("user"):
            options += ["-l", host["user"]]
        if host.get("identity"):
            options += ["-i", os.path.expanduser(host["identity"]), "-o", "IdentitiesOnly=yes"]
        return cls(host.get("ssh") or host["host"], options)

    def _ensure_master(self) -> None:
        """Open the shared connection in the background if none is open (its stdio detached,
        so that no later command waits on it)."""
        base = ["ssh", *self.options]
        if subprocess.run([*base, "-O", "check", self.target], capture_output=True).returncode == 0:
            return
        with tempfile.TemporaryFile() as err:
            master = ["-o", "ControlMaster=yes", "-o", "ControlPersist=120", "-f", "-N"]
            try:
                started = subprocess.run(
                    [*base, *master, self.target],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=60,
                )
            except subprocess.TimeoutExpired:
                raise UserError(f"cannot reach {self.target} over ssh: no answer in 60 s") from None
            if started.returncode != 0:
                err.seek(0)
                lines = err.read().decode(errors="replace").strip().splitlines()
                raise UserError(
                    f"cannot reach {self.target} over ssh: {lines[-1] if lines else 'no message'}"
                )

    def run(
        self, command: str, *, stdin: bytes = b"", timeout: float | None = 300
    ) -> subprocess.CompletedProcess[bytes]:
        self._ensure_master()
        argv = [
            "ssh",
            *self.options,
            "-o",
            "ControlMaster=no",
            self.target,
            "--",
            "bash -c " + shlex.quote(command),
        ]
        try:
            result = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"{self.target} did not answer over ssh within {timeout:.0f} s"
            ) from None
        if result.returncode == 255:
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            raise UserError(f"ssh to {self.target} failed: {lines[-1] if lines else 'no message'}")
        return result
