"""The `doctor` job: `theseus doctor` as a job, so that `theseus submit` can run it on a
cluster with as many processes as a training run would have."""

from __future__ import annotations

from dataclasses import dataclass

from theseus.config import field
from theseus.job import BasicJob
from theseus.registry import job


@dataclass
class DoctorConfig:
    all_reduce_mb: float = field(
        "doctor/all_reduce_mb", default=16.0, help="MiB per device summed by the timed all-reduce"
    )


@job("doctor")
class Doctor(BasicJob[DoctorConfig]):
    """Check what each process sees: host, devices, coordinator, all-reduce bandwidth, output root."""

    CONFIG = DoctorConfig
    DISTRIBUTED = True  # it examines a job of several processes as training would run it

    def run(self) -> None:
        from theseus.parallel.doctor import run_doctor

        code = run_doctor(self.spec.root, self.config.all_reduce_mb)
        if code:
            raise SystemExit(code)  # the problems are printed, one line each
