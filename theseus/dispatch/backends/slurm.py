"""SLURM: `sbatch` on a login node (over ssh, or here when sbatch is on PATH).

`sbatch` is never retried: if the answer is lost, a second try could start the job twice.
"""

from __future__ import annotations

import shlex

from theseus.dispatch.backends import Backend, LaunchRefused, check, env_stream
from theseus.dispatch.bootstrap import JobFiles
from theseus.dispatch.records import Record
from theseus.errors import UserError

_QUEUED = {
    "PENDING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SUSPENDED",
    "RESV_DEL_HOLD",
}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


class SlurmBackend(Backend):
    kind = "slurm"

    def launch(self, job: JobFiles, env: dict[str, str]) -> str:
        unsure = (
            "; the job may have been submitted all the same: look with `squeue --me` "
            f"on {self.shell.where} before you submit again"
        )
        try:
            result = self.shell.run(f"bash {shlex.quote(job.launcher)}", stdin=env_stream(env))
        except UserError as exc:
            raise UserError(f"{exc}{unsure}") from None
        try:
            job_id = check(result, "sbatch", self.shell.where, LaunchRefused)
        except LaunchRefused as exc:
            if b"timed out" in result.stderr:
                # the controller may have queued the job before its answer was lost
                raise UserError(f"{exc}{unsure}") from None
            raise
        return job_id.decode().strip().splitlines()[-1].split(";")[0]

    def state_commands(self, record: Record) -> list[str]:
        job_id = shlex.quote(record.backend_id)
        return [f"squeue -h -j {job_id} -o '%T %r'", f"cat {shlex.quote(record.job_dir)}/status"]

    def interpret(self, record: Record, values: list[str]) -> tuple[str, str]:
        queue_state, _, reason = values[0].partition(" ")
        status, *code = values[1].split() or [""]
        if queue_state in _QUEUED:
            return "queued", "" if reason in ("", "None") else reason
        if queue_state in _RUNNING:
            return "running", ""
        if queue_state == "CANCELLED" or (record.cancelled and status != "completed"):
            return "cancelled", ""
        if queue_state == "PREEMPTED":
            return "preempted", ""
        if status == "failed":
            return "failed", f"exit {code[0]}" if code else ""
        if status in ("completed", "preempted"):
            return status, ""
        if queue_state == "COMPLETED":
            return "completed", ""
        if queue_state:
            return "failed", f"SLURM state {queue_state}"
        return "unknown", "no longer in squeue, and it wrote no status"

    def cancel(self, record: Record) -> None:
        # The marker keeps the batch script from requeueing the job when it exits after SIGTERM.
        marker = shlex.quote(f"{record.job_dir}/cancelled")
        command = f"touch {marker} && scancel {shlex.quote(record.backend_id)}"
        check(self.shell.run(command, timeout=60), "scancel", self.shell.where)
