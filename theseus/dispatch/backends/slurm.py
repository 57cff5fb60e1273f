"""SLURM: `sbatch` on a login node (over ssh, or here when sbatch is on PATH).

`sbatch` is never retried: if the answer is lost, a second try could start the job twice.
"""

from __future__ import annotations

import shlex

from theseus.dispatch.backends import Backend, check, env_stream
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
        try:
            result = self.shell.run(f"bash {shlex.quote(job.launcher)}", stdin=env_stream(env))
        except UserError as exc:
            raise UserError(
                f"{exc}; the job may have been submitted all the same: look with `squeue --me` "
                f"on {self.shell.where} before you submit again"
            ) from None
        job_id = check(result, "sbatch", self.shell.where).decode().strip().splitlines()[-1]
        return job_id.split(";")[0]

    def state(self, record: Record) -> str:
        job_id = shlex.quote(record.backend_id)
        q = shlex.quote(record.job_dir)
        command = f"squeue -h -j {job_id} -o %T 2>/dev/null | head -n 1; echo '|'; cat {q}/status 2>/dev/null || true"
        out = check(self.shell.run(command, timeout=60), "squeue", self.shell.where).decode()
        queue_state, _, status = (part.strip() for part in out.partition("|"))
        status = status.split()[0] if status else ""
        if queue_state in _QUEUED:
            return "queued"
        if queue_state in _RUNNING:
            return "running"
        if queue_state == "CANCELLED" or (record.cancelled and status != "completed"):
            return "cancelled"
        if queue_state == "PREEMPTED":
            return "preempted"
        if status in ("completed", "preempted", "failed"):
            return status
        if queue_state == "COMPLETED":
            return "completed"
        return "failed" if queue_state else "unknown"

    def cancel(self, record: Record) -> None:
        # The marker keeps the batch script from requeueing the job when it exits after SIGTERM.
        marker = shlex.quote(f"{record.job_dir}/cancelled")
        command = f"touch {marker} && scancel {shlex.quote(record.backend_id)}"
        check(self.shell.run(command, timeout=60), "scancel", self.shell.where)
